"""Per-rank peak memory and step time of the real stages under ZeRO-0/2/3, next to the estimator.

Builds a random-weight model of a public shape (t5-base, t5-large, ...), saves it to a temporary
HF directory, writes a data set whose examples fill exactly --source-length / --target-length
tokens, and runs ``run.py finetune`` and/or ``run.py prune`` (NASH mask learning with
distillation; teacher = that model, student = the teacher keeping --decoder-layers of its decoder
layers) and/or "student" (``run.py prune prune.method=sft`` with distillation weights 0: the same
student, cross-entropy only, no masks, no teacher forward) through the real launcher (``python`` for 1 rank, ``deepspeed --num_gpus N`` otherwise)
for every (stage, config:ranks) pair. For each config:ranks the stages run back to back, so the
two runs of one overhead ratio see the same machine load.

Every rank runs this file as its entry point (``--rank``), which wraps ``nash_ds.cli.main`` to
record ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` and the current RSS at fixed points (each
``models.load_model`` call, entry and exit of ``dist.initialize`` = all models built / training
engine ready, after each optimizer step), then ends every rank together after --steps steps
(evaluation, checkpoint and export would otherwise add rank-0-only peaks that are not training
memory). Step time = median of the step-to-step intervals after step 1 (step 1 includes the
warm-up: first allocations, ZeRO-3 parameter fetch set-up, data loader start); step 1's own time
is kept as ``first_step_s`` in the JSON. The estimator's figure (``nash_ds.memory``) is
printed beside each run; it is told the run built its models partitioned (``zero_init``) exactly
when the probes saw ZeRO-3 partitions (>= 95% of the elements) right after every ``load_model``
and on the student handed to ``dist.initialize`` (column ``part.``: yes / partly / no).

Under ZeRO-3 the stages build their models partitioned themselves (finetune loads under
``nash_ds.dist.zero3_init_context``, prune builds teacher and student partitioned) and
``nash_ds.dist.initialize`` drops DeepSpeed's cloned fp32 master; the bench patches neither
(the former ``--zero-init`` and ``--share-master`` flags are gone). The ``part.`` column and the
JSON (``loads``, ``student_partitioned``, ``fp32_master_shared`` per rank) show what the stage did.

Tables: one row per run (stage, config, ranks: peak GiB per rank, predicted, x the first 1-rank
run of the same stage, s/step, RSS after initialize and when built); then, when both stages ran,
the overhead table: per config:ranks, finetune (and student) and prune s/step, prune / finetune,
prune / student, and the peak GiB per rank of finetune and prune.

    python bench/memory.py --shape t5-base --stage finetune,student,prune --runs zero0:1,zero2:2,zero3:2 --steps 4
    python bench/memory.py --shape t5-large --stage prune --runs zero3:2 --steps 3
    python bench/memory.py --shape t5-small --stage finetune,prune --runs zero0:1,zero3:2 --steps 2  # smoke

Flags: --shape, --stage (comma list of finetune, prune, student), --runs (config:ranks list; zero0 means
zero0_fp32), --steps (>= 2), --source-length, --target-length, --batch-size, --decoder-layers,
--checkpointing, --mmap-threshold (glibc MALLOC_MMAP_THRESHOLD_ for the ranks), --mallopt (the
same set at run time), --trim (malloc_trim after deepspeed.initialize), --threads, --json (args,
machine, load, every run with its per-rank marks and step times, the overhead rows), --keep.
NASH_MEM_CENSUS=1 adds a census of live tensors to each rank's JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nash_ds.testing import offline_env, run_ranks  # noqa: E402

GiB = 2**30
STAGES = ("finetune", "prune", "student")


# ------------------------------------------------------------------------------ inside each rank


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _partitioned(model) -> float | None:
    """Share of the module's elements held as ZeRO-3 partitions (``ds_id``); None without parameters."""
    sizes = [(p.ds_numel, True) if hasattr(p, "ds_id") else (p.numel(), False)
             for p in getattr(model, "parameters", lambda: [])()]
    total = sum(n for n, _ in sizes)
    return None if not total else sum(n for n, part in sizes if part) / total


def rank_main(argv: list[str]) -> int:
    """Entry of one rank: run.py's main with probes; writes $NASH_MEM_OUT/rank-<r>.json."""
    out_dir = Path(os.environ["NASH_MEM_OUT"])
    stop_after = int(os.environ["NASH_MEM_STEPS"])
    trim = os.environ.get("NASH_MEM_TRIM") == "1"
    if os.environ.get("NASH_MEM_MALLOPT"):  # what the proposed dist.init_distributed hook does at run time
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, int(os.environ["NASH_MEM_MALLOPT"]))  # M_MMAP_THRESHOLD
    import importlib

    from nash_ds import cli, dist, models

    marks: dict[str, dict] = {}
    loads: list[dict] = []
    step_ends: list[float] = []
    info: dict = {}

    def mark(name: str) -> dict:
        marks[name] = {"maxrss": _maxrss(), "rss": _rss(), "t": time.perf_counter()}
        return marks[name]

    def write() -> None:
        r = int(os.environ.get("RANK", "0"))
        if os.environ.get("NASH_MEM_CENSUS") == "1":
            marks["census"] = tensor_census()
        steps = [b - a for a, b in itertools.pairwise(step_ends)]
        first = (step_ends[0] - marks["after_initialize"]["t"]) if step_ends and "after_initialize" in marks else None
        (out_dir / f"rank-{r}.json").write_text(json.dumps({
            "rank": r, "marks": marks, "loads": loads, **info, "first_step_s": first, "step_times": steps,
            "step_time": statistics.median(steps) if steps else None, "peak": _maxrss()}))

    # load_model: patched on nash_ds.models and on every stage module that bound it at import time;
    # the wrapper only observes, so it works inside whatever context the stage calls it in.
    orig_load = models.load_model

    def load(*a, **k):
        before = {"maxrss": _maxrss(), "rss": _rss(), "t": time.perf_counter()}
        m = orig_load(*a, **k)
        loads.append({"name": str(a[0] if a else k.get("name_or_path")), "before": before,
                      "after": {"maxrss": _maxrss(), "rss": _rss(), "t": time.perf_counter()},
                      "partitioned": _partitioned(m)})
        return m

    models.load_model = load
    for name in ("nash_ds.stages.finetune", "nash_ds.stages.prune"):  # in case a stage binds it at import
        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 - the stage itself reports it when it runs
            continue
        if getattr(mod, "load_model", None) is orig_load:
            mod.load_model = load

    orig_init = dist.initialize

    def initialize(model, **k):
        mark("before_initialize")  # every model of the stage is built (and the teacher wrapped)
        # prune trains a wrapper (student + masks + distillation projections, built replicated): the student
        info["student_partitioned"] = _partitioned(getattr(model, "student", model))
        engine = orig_init(model, **k)
        opt = getattr(engine, "optimizer", None)
        lows, masters = (getattr(opt, "fp16_partitioned_groups_flat", None),
                         getattr(opt, "fp32_partitioned_groups_flat", None))
        info["fp32_master_shared"] = bool(lows and masters and all(a is b for a, b in zip(lows, masters)))
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


# ------------------------------------------------------------------------------ the driver


def build_model_dir(shape: str, out: Path, *, seed: int = 0) -> Path:
    """Random-weight HF directory of a named shape (``nash_ds.models.SHAPES``), built as the estimator's model is
    (``models.random_model``: an untied LM head, T5 v1.1 / Flan-T5, is a tensor of its own)."""
    from nash_ds.memory import model_config
    from nash_ds.testing import random_model_dir

    return random_model_dir(model_config(shape), out, seed=seed)


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


def run_one(stage: str, config: str, ranks: int, *, args, model_dir: Path, data_dir: Path, work: Path) -> dict:
    from nash_ds.demo import DEMO_TOKENIZER

    out = work / f"{stage}-{config}-{ranks}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    overrides = [f"output_dir={out / 'run'}", "overwrite=true", f"train.ds_config=ds_configs/{config}.json",
                 f"train.micro_batch_size={args.batch_size}", "train.grad_accum=1", f"train.max_steps={args.steps + 5}",
                 "train.warmup_steps=0", "train.eval_every=0", "train.save_every=0", "train.log_every=1",
                 f"data.task={data_dir}", f"data.max_source_length={args.source_length}",
                 f"data.max_target_length={args.target_length}", "data.max_eval_samples=2", f"model.tokenizer={DEMO_TOKENIZER}",
                 f"train.gradient_checkpointing={'true' if args.checkpointing else 'false'}"]
    if stage == "finetune":
        overrides.append(f"model.name_or_path={model_dir}")
    else:
        method = "nash" if stage == "prune" else "sft"
        overrides += [f"prune.teacher={model_dir}", f"model.name_or_path={model_dir}", f"prune.method={method}",
                      f"prune.decoder_layers={args.decoder_layers}", "prune.sparsity_warmup_steps=2"]
        if stage == "student":  # the same decoder-cut student, plain cross-entropy: no masks, no teacher forward
            overrides += ["distill.ce_weight=1", "distill.kd_weight=0", "distill.hidden_weight=0"]
    env = offline_env(drop=("RANK", "WORLD_SIZE", "LOCAL_RANK"), OMP_NUM_THREADS=str(args.threads),
                      NASH_MEM_OUT=str(out), NASH_MEM_STEPS=str(args.steps), NASH_MEM_TRIM="1" if args.trim else "0",
                      **({"MALLOC_MMAP_THRESHOLD_": str(args.mmap_threshold)} if args.mmap_threshold else {}),
                      **({"NASH_MEM_MALLOPT": str(args.mallopt)} if args.mallopt else {}))
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = run_ranks(Path(__file__).resolve(), "--rank", "--", "finetune" if stage == "finetune" else "prune",
                  *overrides, ranks=ranks, env=env)
    wall = time.perf_counter() - t0
    files = sorted(out.glob("rank-*.json"))
    if r.returncode != 0 or len(files) != ranks:
        raise RuntimeError(f"{stage} {config}:{ranks}: {' '.join(r.args)} exited {r.returncode} with {len(files)} "
                           f"rank files\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    per_rank = [json.loads(f.read_text()) for f in files]
    loads = [ld for p in per_rank for ld in p["loads"]]
    shares = [ld["partitioned"] or 0.0 for ld in loads] + [p.get("student_partitioned") or 0.0 for p in per_rank]
    partitioned = "yes" if shares and min(shares) >= 0.95 else "partly" if any(shares) else "no"
    firsts = [p["first_step_s"] for p in per_rank if p.get("first_step_s") is not None]
    return {"stage": stage, "config": config, "ranks": ranks, "wall_s": wall, "load_before": load,
            "per_rank": per_rank, "peak_gib": [p["peak"] / GiB for p in per_rank],
            "built_partitioned": partitioned,
            "fp32_master_shared": all(p.get("fp32_master_shared") for p in per_rank),
            "first_step_s": max(firsts) if firsts else None,
            "step_s": statistics.median([p["step_time"] for p in per_rank if p["step_time"] is not None] or [0.0])}


def predicted(stage: str, config: str, ranks: int, args, *, zero_init: bool) -> float:
    """The estimator's per-rank total (GiB) for this run."""
    from nash_ds.config import load_config
    from nash_ds.config import EstimateConfig
    from nash_ds.memory import estimate

    cfg = load_config(None, [f"train.micro_batch_size={args.batch_size}", f"data.max_source_length={args.source_length}",
                             f"data.max_target_length={args.target_length}", f"prune.decoder_layers={args.decoder_layers}",
                             f"train.ds_config=ds_configs/{config}.json",
                             f"train.gradient_checkpointing={'true' if args.checkpointing else 'false'}"])
    est = EstimateConfig(model=args.shape, stage="finetune" if stage == "finetune" else "prune", world_size=ranks,
                         ranks_per_node=ranks, device="cpu",
                         memory_gb=1000.0, zero_init=zero_init, candidates=[f"{config}.json"])
    return estimate(cfg, est)["plans"][0]["total"] / GiB  # student: counted as prune (its teacher is loaded)


def _gib_list(xs: list[float]) -> str:
    return " / ".join(f"{g:.2f}" for g in xs)


def overhead_rows(results: list[dict]) -> list[dict]:
    """Per config:ranks with both stages: finetune and prune s/step, their ratio, peaks per rank."""
    by = {(r["stage"], r["config"], r["ranks"]): r for r in results}
    rows = []
    for (stage, config, ranks), ft in by.items():
        pr = by.get(("prune", config, ranks))
        if stage != "finetune" or pr is None:
            continue
        st = by.get(("student", config, ranks))
        rows.append({"config": config, "ranks": ranks, "finetune_step_s": ft["step_s"], "prune_step_s": pr["step_s"],
                     "ratio": pr["step_s"] / ft["step_s"] if ft["step_s"] else None,
                     "student_step_s": st["step_s"] if st else None,
                     "ratio_student": pr["step_s"] / st["step_s"] if st and st["step_s"] else None,
                     "finetune_peak_gib": ft["peak_gib"], "prune_peak_gib": pr["peak_gib"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--rank" in argv:  # the deepspeed launcher puts --local_rank=N first
        return rank_main([a for a in argv if not a.startswith("--local_rank") and a not in ("--rank", "--")])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="t5-base")
    p.add_argument("--stage", default="finetune", help="comma list of finetune, prune, student (e.g. finetune,student,prune)")
    p.add_argument("--runs", default="zero0_fp32:1,zero2_fp32:2,zero3_fp32:2",
                   help="comma list of <ds_config name>:<ranks>; zero0 means zero0_fp32")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per run (>= 2: step 1 is not timed)")
    p.add_argument("--source-length", type=int, default=64)
    p.add_argument("--target-length", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--decoder-layers", type=int, default=4, help="prune: decoder layers the student keeps")
    p.add_argument("--checkpointing", action="store_true", help="train.gradient_checkpointing=true")
    p.add_argument("--trim", action="store_true", help="malloc_trim(0) after deepspeed.initialize")
    p.add_argument("--mmap-threshold", type=int, default=0,
                   help="glibc MALLOC_MMAP_THRESHOLD_ for the ranks (e.g. 1048576): large frees go back to the OS")
    p.add_argument("--mallopt", type=int, default=0,
                   help="the same threshold set at run time with mallopt(M_MMAP_THRESHOLD) in each rank")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--keep", default=None, help="work directory to keep (default: a temporary one)")
    args = p.parse_args(argv)
    stages = [s.strip() for s in args.stage.split(",") if s.strip()]
    if not stages or any(s not in STAGES for s in stages):
        p.error(f"--stage: comma list of {', '.join(STAGES)}, got {args.stage!r}")
    stages = list(dict.fromkeys(stages))
    if args.steps < 2:
        p.error("--steps must be >= 2 (step 1 includes the warm-up and is not timed)")
    runs = []
    for item in args.runs.split(","):
        name, _, n = item.strip().partition(":")
        name = name if name.endswith(("fp32", "bf16")) or "_" in name else f"{name}_fp32"
        if not (REPO / "ds_configs" / f"{name}.json").is_file():
            p.error(f"--runs: no ds_configs/{name}.json")
        runs.append((name, int(n or 1)))
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nash-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    print(f"# {platform.node()} {os.cpu_count()} cores, load {load0[0]:.1f}; shape {args.shape}, "
          f"stages {','.join(stages)}, batch {args.batch_size}, {args.source_length}/{args.target_length} tokens, "
          f"prune keeps {args.decoder_layers} decoder layers, {args.steps} steps, threads {args.threads}, "
          f"checkpointing={args.checkpointing}, mmap_threshold={args.mmap_threshold}, mallopt={args.mallopt}, "
          f"trim={args.trim}, work {work}", flush=True)
    model_dir = work / f"model-{args.shape}"
    if not (model_dir / "config.json").is_file():
        build_model_dir(args.shape, model_dir)
    data_dir = write_data(work / "data")
    results = []
    print(f"# s/step: median of steps 2..{args.steps} (step 1, with warm-up, excluded); peaks: ru_maxrss per rank; "
          "x 1-rank: max peak / the first 1-rank run of the same stage; after init / built: max over ranks of "
          "ru_maxrss after deepspeed.initialize / when every model was built; part.: models (each load, and the "
          "student at dist.initialize) built as ZeRO-3 partitions: yes / partly / no",
          flush=True)
    header = (f"{'stage':<9}{'config':<14}{'ranks':>6}{'peak GiB per rank':>20}{'predicted':>11}{'x 1-rank':>10}"
              f"{'s/step':>9}{'step 1 s':>10}{'after init':>12}{'built':>8}{'part.':>7}")
    print(header, flush=True)
    base: dict[str, float] = {}
    for name, n in runs:
        for stage in stages:
            res = run_one(stage, name, n, args=args, model_dir=model_dir, data_dir=data_dir, work=work)
            zero_init = res["built_partitioned"] == "yes" and name.startswith("zero3")
            res["predicted_gib"] = predicted(stage, name, n, args, zero_init=zero_init)
            res["predicted_zero_init"] = zero_init
            peak = max(res["peak_gib"])
            if stage not in base and n == 1:
                base[stage] = peak
            res["ratio_to_first_1rank"] = peak / base[stage] if stage in base else None
            after_init = max(p["marks"].get("after_initialize", {}).get("maxrss", 0) for p in res["per_rank"]) / GiB
            built = max(p["marks"].get("before_initialize", {}).get("maxrss", 0) for p in res["per_rank"]) / GiB
            ratio = res["ratio_to_first_1rank"]
            first = res["first_step_s"]
            print(f"{stage:<9}{name:<14}{n:>6}{_gib_list(res['peak_gib']):>20}{res['predicted_gib']:>11.2f}"
                  f"{(f'{ratio:.2f}' if ratio else '-'):>10}{res['step_s']:>9.2f}"
                  f"{(f'{first:.2f}' if first is not None else '-'):>10}{after_init:>12.2f}{built:>8.2f}"
                  f"{res['built_partitioned']:>7}", flush=True)
            results.append(res)
    overhead = overhead_rows(results)
    if overhead:
        print(f"\n# overhead: NASH mask learning with distillation (prune, student keeps {args.decoder_layers} decoder "
              f"layers, teacher forward included) vs plain fine-tune of the full model, same ds_config and ranks; "
              f"s/step = median of steps 2..{args.steps} (step 1, with warm-up, excluded)", flush=True)
        print("# student: the same decoder-cut student trained with cross-entropy only (prune.method=sft, no "
              "distillation: no masks, no teacher forward), when --stage includes it", flush=True)
        print(f"{'config':<14}{'ranks':>6}{'finetune s/step':>17}{'student s/step':>16}{'prune s/step':>14}"
              f"{'prune/ft':>10}{'prune/student':>15}{'finetune peak GiB/rank':>24}{'prune peak GiB/rank':>21}",
              flush=True)
        for o in overhead:
            ratio = f"{o['ratio']:.2f}" if o["ratio"] else "-"
            st = f"{o['student_step_s']:.2f}" if o["student_step_s"] else "-"
            rs = f"{o['ratio_student']:.2f}" if o["ratio_student"] else "-"
            print(f"{o['config']:<14}{o['ranks']:>6}{o['finetune_step_s']:>17.2f}{st:>16}{o['prune_step_s']:>14.2f}"
                  f"{ratio:>10}{rs:>15}{_gib_list(o['finetune_peak_gib']):>24}{_gib_list(o['prune_peak_gib']):>21}",
                  flush=True)
    load1 = os.getloadavg()
    print(f"# load at end {load1[0]:.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "stages": stages, "machine": platform.node(),
                                               "cores": os.cpu_count(), "load_start": load0, "load_end": load1,
                                               "results": results, "overhead": overhead}, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
