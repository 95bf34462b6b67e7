"""Per-rank peak memory and step time of the real stages under ZeRO-0/2/3, next to the estimator.

Builds a random-weight model of a public shape (t5-base, t5-large, ...), saves it to a temporary
HF directory, writes a data set whose examples fill exactly --source-length / --target-length
tokens, and runs ``run.py finetune`` or ``run.py prune`` (NASH, teacher = that model) through the
real launcher (``python`` for 1 rank, ``deepspeed --num_gpus N`` otherwise). Every rank runs this
file as its entry point (``--rank``), which wraps ``nash_ds.cli.main`` to record
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` and the current RSS at fixed points (model built,
after ``deepspeed.initialize``, after each optimizer step), then ends every rank together after
--steps steps (evaluation, checkpoint and export would otherwise add rank-0-only peaks that are
not training memory). The estimator's figure (``nash_ds.estimate``) is printed beside each run.

    python bench/memory.py --shape t5-base --runs zero0:1,zero2:2,zero3:2 --steps 4
    python bench/memory.py --shape t5-base --runs zero3:2 --zero-init        # build partitioned
    python bench/memory.py --shape t5-large --stage prune --runs zero3:2 --steps 3
    python bench/memory.py --shape t5-small --runs zero0:1,zero3:2 --steps 2  # smoke

``--zero-init`` builds the model under ``nash_ds.dist.zero3_init_context`` (transformers loads
each weight straight into its ZeRO-3 partition), i.e. what finetune does once the lead applies
the one-line change in docs/SCALE.md. Flags: --shape, --stage, --runs (config:ranks list),
--steps, --source-length, --target-length, --batch-size, --decoder-layers, --zero-init,
--share-master (fp32 ZeRO-3 without DeepSpeed's cloned master copy), --mmap-threshold (glibc
MALLOC_MMAP_THRESHOLD_ for the ranks), --trim (malloc_trim after deepspeed.initialize), --threads,
--json, --keep. NASH_MEM_CENSUS=1 adds a census of live tensors to each rank's JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GiB = 2**30


# ------------------------------------------------------------------------------ inside each rank


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def rank_main(argv: list[str]) -> int:
    """Entry of one rank: run.py's main with probes; writes $NASH_MEM_OUT/rank-<r>.json."""
    out_dir = Path(os.environ["NASH_MEM_OUT"])
    stop_after = int(os.environ["NASH_MEM_STEPS"])
    zero_init = os.environ.get("NASH_MEM_ZERO_INIT") == "1"
    trim = os.environ.get("NASH_MEM_TRIM") == "1"
    share_master = os.environ.get("NASH_MEM_SHARE_MASTER") == "1"
    if os.environ.get("NASH_MEM_MALLOPT"):  # what the proposed dist.init_distributed hook does at run time
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, int(os.environ["NASH_MEM_MALLOPT"]))  # M_MMAP_THRESHOLD
    from nash_ds import cli, dist, models

    marks: dict[str, dict] = {}
    step_ends: list[float] = []
    resolved: dict = {}

    def mark(name: str) -> None:
        marks[name] = {"maxrss": _maxrss(), "rss": _rss(), "t": time.perf_counter()}

    def write() -> None:
        r = int(os.environ.get("RANK", "0"))
        if os.environ.get("NASH_MEM_CENSUS") == "1":
            marks["census"] = tensor_census()
        steps = [b - a for a, b in itertools.pairwise(step_ends)]
        (out_dir / f"rank-{r}.json").write_text(json.dumps({
            "rank": r, "marks": marks, "step_times": steps,
            "step_time": statistics.median(steps) if steps else None, "peak": _maxrss()}))

    orig_resolve = dist.resolve_ds_config

    def resolve(*a, **k):
        ds = orig_resolve(*a, **k)
        resolved.update(ds)
        return ds

    orig_load = models.load_model

    def load(*a, **k):
        mark("before_load")
        ctx = dist.zero3_init_context(resolved) if zero_init else _null()
        with ctx:
            m = orig_load(*a, **k)
        mark("after_load")
        return m

    orig_init = dist.initialize

    def initialize(model, **k):
        mark("before_initialize")
        engine = orig_init(model, **k)
        if share_master:
            marks["shared_master_bytes"] = {"bytes": dist.share_fp32_master(engine)}
        if trim:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        mark("after_initialize")
        if os.environ.get("NASH_MEM_CENSUS") == "1":
            marks["census_after_initialize"] = tensor_census()
        step = engine.step

        def timed_step(*a, **kw):
            out = step(*a, **kw)
            step_ends.append(time.perf_counter())
            mark(f"step_{len(step_ends)}")
            if len(step_ends) >= stop_after:
                write()
                dist.barrier()
                os._exit(0)  # every rank, same point: skip eval, checkpoint, export
            return out

        engine.step = timed_step
        return engine

    orig_stage = cli.run_stage

    def run_stage(*a, **k):
        try:
            return orig_stage(*a, **k)
        except Exception:
            import traceback

            traceback.print_exc()  # cli prints only the message of a ValueError
            raise

    cli.run_stage = run_stage
    dist.resolve_ds_config = resolve
    models.load_model = load
    dist.initialize = initialize
    code = cli.main(argv)
    write()
    return code


def tensor_census(top: int = 12) -> dict:
    """Bytes of live tensor storages (each storage once) and the largest ones: what RSS is made of."""
    import gc

    import torch

    seen: dict[int, tuple[int, str]] = {}
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor) or obj.device.type != "cpu":
                continue
            st = obj.untyped_storage()
            seen.setdefault(st.data_ptr(), (st.nbytes(), f"{tuple(obj.shape)} {obj.dtype}"))
        except Exception:  # noqa: BLE001, S112 - meta / sparse / freed storages: nothing to count
            continue
    sizes = sorted(seen.values(), reverse=True)
    return {"live_bytes": sum(s for s, _ in sizes), "count": len(sizes),
            "largest": [(s / 2**20, what) for s, what in sizes[:top]]}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------------ the driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_model_dir(shape: str, out: Path, *, seed: int = 0) -> Path:
    """Random-weight HF directory of a named shape (``nash_ds.estimate.SHAPES``)."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from nash_ds.estimate import model_config

    config = model_config(shape)
    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(config)
    model.save_pretrained(out)
    del model
    return out


def write_data(out: Path, *, words: int = 400, num: int = 64) -> Path:
    """train/validation JSONL whose sources and targets overflow any length below ``words`` tokens."""
    out.mkdir(parents=True, exist_ok=True)
    src = json.loads((REPO / "nash_ds/demo/data/train.jsonl").read_text().splitlines()[0])
    text = " ".join([src["dialogue"].replace("\n", " ")] * 20)
    target = " ".join([src["summary"]] * 10)
    for split in ("train", "validation"):
        with open(out / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps({"source": text, "target": target}) + "\n" for _ in range(num))
    return out


def run_one(config: str, ranks: int, *, args, model_dir: Path, data_dir: Path, work: Path) -> dict:
    from nash_ds.demo import DEMO_TOKENIZER

    out = work / f"{config}-{ranks}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    overrides = [f"output_dir={out / 'run'}", "overwrite=true", f"train.ds_config=ds_configs/{config}.json",
                 f"train.micro_batch_size={args.batch_size}", "train.grad_accum=1", f"train.max_steps={args.steps + 5}",
                 "train.warmup_steps=0", "train.eval_every=0", "train.save_every=0", "train.log_every=1",
                 f"data.task={data_dir}", f"data.max_source_length={args.source_length}",
                 f"data.max_target_length={args.target_length}", "data.max_eval_samples=2", f"model.tokenizer={DEMO_TOKENIZER}",
                 f"train.gradient_checkpointing={'true' if args.checkpointing else 'false'}"]
    if args.stage == "finetune":
        overrides.append(f"model.name_or_path={model_dir}")
    else:
        overrides += [f"prune.teacher={model_dir}", f"model.name_or_path={model_dir}", "prune.method=nash",
                      f"prune.decoder_layers={args.decoder_layers}", "prune.sparsity_warmup_steps=2"]
    entry = [str(Path(__file__).resolve()), "--rank", "--", args.stage, *overrides]
    if ranks == 1:
        cmd = [sys.executable, *entry]
    else:
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(ranks), "--master_port",
               str(_free_port()), *entry]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(args.threads), NASH_MEM_OUT=str(out), NASH_MEM_STEPS=str(args.steps),
               NASH_MEM_ZERO_INIT="1" if args.zero_init else "0", NASH_MEM_TRIM="1" if args.trim else "0",
               NASH_MEM_SHARE_MASTER="1" if args.share_master else "0",
               **({"MALLOC_MMAP_THRESHOLD_": str(args.mmap_threshold)} if args.mmap_threshold else {}),
               **({"NASH_MEM_MALLOPT": str(args.mallopt)} if args.mallopt else {}),
               PYTHONPATH=str(REPO))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    files = sorted(out.glob("rank-*.json"))
    if r.returncode != 0 or len(files) != ranks:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode} with {len(files)} rank files\n"
                           f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    per_rank = [json.loads(f.read_text()) for f in files]
    return {"config": config, "ranks": ranks, "wall_s": wall, "per_rank": per_rank,
            "peak_gib": [p["peak"] / GiB for p in per_rank],
            "step_s": statistics.median([p["step_time"] for p in per_rank if p["step_time"] is not None] or [0.0])}


def predicted(config: str, ranks: int, args) -> float:
    """The estimator's per-rank total (GiB) for this run."""
    from nash_ds import estimate as est_mod
    from nash_ds.config import load_config
    from nash_ds.estimate import EstimateConfig, estimate

    if args.share_master:
        est_mod.FP32_ZERO3_MASTER_BYTES = 0
    cfg = load_config(None, [f"train.micro_batch_size={args.batch_size}", f"data.max_source_length={args.source_length}",
                             f"data.max_target_length={args.target_length}", f"prune.decoder_layers={args.decoder_layers}",
                             f"train.ds_config=ds_configs/{config}.json",
                             f"train.gradient_checkpointing={'true' if args.checkpointing else 'false'}"])
    est = EstimateConfig(model=args.shape, stage=args.stage, world_size=ranks, ranks_per_node=ranks, device="cpu",
                         memory_gb=1000.0, zero_init=args.zero_init, candidates=[f"{config}.json"])
    return estimate(cfg, est)["plans"][0]["total"] / GiB


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--rank" in argv:  # the deepspeed launcher puts --local_rank=N first
        return rank_main([a for a in argv if not a.startswith("--local_rank") and a not in ("--rank", "--")])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="t5-base")
    p.add_argument("--stage", choices=("finetune", "prune"), default="finetune")
    p.add_argument("--runs", default="zero0_fp32:1,zero2_fp32:2,zero3_fp32:2",
                   help="comma list of <ds_config name>:<ranks>; zero0 means zero0_fp32")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--source-length", type=int, default=64)
    p.add_argument("--target-length", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--decoder-layers", type=int, default=4)
    p.add_argument("--checkpointing", action="store_true", help="train.gradient_checkpointing=true")
    p.add_argument("--zero-init", action="store_true", help="build the model under dist.zero3_init_context")
    p.add_argument("--trim", action="store_true", help="malloc_trim(0) after deepspeed.initialize")
    p.add_argument("--share-master", action="store_true",
                   help="fp32 ZeRO-3: optimizer updates the partitions in place (no cloned master copy)")
    p.add_argument("--mmap-threshold", type=int, default=0,
                   help="glibc MALLOC_MMAP_THRESHOLD_ for the ranks (e.g. 1048576): large frees go back to the OS")
    p.add_argument("--mallopt", type=int, default=0,
                   help="the same threshold set at run time with mallopt(M_MMAP_THRESHOLD) in each rank")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--keep", default=None, help="work directory to keep (default: a temporary one)")
    args = p.parse_args(argv)
    if args.zero_init and args.stage == "prune":
        p.error("--zero-init applies to finetune: prune deep-copies the teacher into the student, which a "
                "partitioned teacher does not allow (see docs/SCALE.md)")
    runs = []
    for item in args.runs.split(","):
        name, _, n = item.partition(":")
        name = name if name.endswith(("fp32", "bf16")) or "_" in name else f"{name}_fp32"
        runs.append((name, int(n or 1)))
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nash-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# {platform.node()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; shape {args.shape}, "
          f"{args.stage}, batch {args.batch_size}, {args.source_length}/{args.target_length} tokens, "
          f"zero_init={args.zero_init}, share_master={args.share_master}, mmap_threshold={args.mmap_threshold}, "
          f"mallopt={args.mallopt}, "
          f"trim={args.trim}, work {work}", flush=True)
    model_dir = work / f"model-{args.shape}"
    if not (model_dir / "config.json").is_file():
        build_model_dir(args.shape, model_dir)
    data_dir = write_data(work / "data")
    results = []
    header = (f"{'config':<14}{'ranks':>6}{'peak GiB per rank':>22}{'predicted':>11}{'x 1-rank':>10}"
              f"{'step s':>9}{'after init':>12}{'loaded':>9}")
    print(header, flush=True)
    base = None
    for name, n in runs:
        res = run_one(name, n, args=args, model_dir=model_dir, data_dir=data_dir, work=work)
        res["predicted_gib"] = predicted(name, n, args)
        peak = max(res["peak_gib"])
        base = base if base is not None else (peak if n == 1 else None)
        res["ratio_to_first_1rank"] = None if base is None else peak / base
        after_init = max(p["marks"].get("after_initialize", {}).get("maxrss", 0) for p in res["per_rank"]) / GiB
        loaded = max(p["marks"].get("after_load", {}).get("maxrss", 0) for p in res["per_rank"]) / GiB
        print(f"{name:<14}{n:>6}{' / '.join(f'{g:.2f}' for g in res['peak_gib']):>22}{res['predicted_gib']:>11.2f}"
              f"{(f'{peak / base:.2f}' if base else '-'):>10}{res['step_s']:>9.2f}{after_init:>12.2f}{loaded:>9.2f}",
              flush=True)
        results.append(res)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "machine": platform.node(),
                                               "load": os.getloadavg(), "results": results}, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
