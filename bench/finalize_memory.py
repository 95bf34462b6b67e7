"""Peak RSS of ``run.py finalize`` on a T5-large-shaped NASH prune checkpoint (random weights).

For each ZeRO stage asked for, a child process writes a prune checkpoint the way the prune stage
writes it: a ``PruneModule`` (student with k decoder layers + MaskSet with random log_alphas +
Lagrangian + distillation projections) through ``nash_ds.dist.initialize`` with the client
AdamW, Adam moments in the optimizer state (as after a step), ``engine.save_checkpoint``,
``prune_meta.json`` and ``COMPLETE`` (``nash_ds.checkpoint.mark_complete``). Then ``run.py
finalize`` runs in its own child and its peak RSS comes from ``os.wait4`` (the kernel's
``ru_maxrss`` of that process: anonymous and file-backed pages, so mapped files count).

    python bench/finalize_memory.py                                  # t5-large, ZeRO-0 and ZeRO-2
    python bench/finalize_memory.py --zero 0 --repo /tmp/before      # the finalizer of another checkout
    python bench/finalize_memory.py --shape tiny --zero 0,2,3        # smoke (seconds)
    deepspeed --num_gpus 2 bench/finalize_memory.py --write DIR --shape tiny --zero 3   # only write (N ranks)

Flags: --shape (t5-large, t5-base, tiny), --k (decoder layers kept), --zero (stages), --repo
(checkout whose run.py finalizes; default this one), --work (where checkpoints go; default a
temp dir, removed unless --keep), --export-dtype, --threads, --json, --write DIR (only write a
checkpoint, as one rank of a launch).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GB = 1e9
SHAPES = ("t5-large", "t5-base", "tiny")
"""Named T5 shapes of ``nash_ds.models.SHAPES``, and ``tiny`` (the tiny-t5 preset)."""
TOKENIZER = REPO / "nash_ds" / "demo" / "tokenizer"


# ------------------------------------------------------------------------------ the checkpoint


def write_checkpoint(out: Path, *, shape: str, k: int, zero: int, seed: int = 0) -> dict:
    """A NASH prune checkpoint of ``shape`` (random weights) in ``out/checkpoints``, on this rank's share."""
    import torch
    from transformers import AutoTokenizer

    from nash_ds import checkpoint as ckpt
    from nash_ds import dist
    from nash_ds.config import RunConfig
    from nash_ds.masks import Masking
    from nash_ds.models import count_params, family_for, random_model, select_decoder_layers
    from nash_ds.stages.common import model_kwargs_from_tokenizer
    from nash_ds.stages.prune import PruneModule
    from nash_ds.trainer import model_param_groups

    dist.init_distributed()
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    ids = model_kwargs_from_tokenizer(tok)
    ids.pop("vocab_size")
    ids["decoder_start_token_id"] = ids["pad_token_id"]
    from nash_ds.models import named_shape_config, preset_config

    teacher_config = preset_config("tiny-t5", vocab_size=256) if shape == "tiny" else named_shape_config(shape)
    for key, value in ids.items():  # the demo tokenizer's special ids
        if value is not None:
            setattr(teacher_config, key, value)
    family = family_for(teacher_config)
    kept = select_decoder_layers(teacher_config.num_decoder_layers, k, "uniform")
    student_config = copy.deepcopy(teacher_config)
    student_config.num_decoder_layers = k
    student = random_model(student_config, seed=seed)  # = make_student's structure, random weights
    masking = Masking.build(family, student.config, method="nash", droprate_init=0.5, teacher_config=teacher_config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in masking.parameters():  # spread: about a third of the encoder's units dropped
            p.copy_(torch.randn(p.shape, generator=g) * 2.0 - 0.5)
    masking.attach(student)
    cfg = RunConfig()
    module = PruneModule(student, family=family, masking=masking, cfg=cfg, kept_decoder_layers=kept)
    groups = model_param_groups(student, lr=1e-6, weight_decay=0.01)
    groups.append({"params": list(module.enc_proj.parameters()) + list(module.dec_proj.parameters()),
                   "lr": 1e-6, "weight_decay": 0.0, "name": "distill_proj"})
    groups.append({"params": masking.parameters(), "lr": 0.01, "weight_decay": 0.0, "betas": (0.0, 0.999),
                   "name": "masks"})
    groups.append({"params": list(module.lagrangian.parameters()), "lr": 0.01, "weight_decay": 0.0,
                   "betas": (0.0, 0.999), "name": "lambdas"})
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    ds = dist.resolve_ds_config(dist.load_ds_config(f"ds_configs/zero{zero}_fp32.json"), micro_batch_size=1,
                                grad_accum=1, grad_clip=1.0, num_ranks=dist.world_size())
    engine = dist.initialize(module, optimizer=optimizer, lr_scheduler=scheduler, ds=ds)
    # Adam's moments, as a real run's files hold them after a step (filled directly: a real step
    # would also hold gradients, ~1.6 GB more for T5-large on a shared machine)
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)  # ZeRO wraps the client optimizer
    for group in base.param_groups:
        for p in group["params"]:
            base.state[p] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(p),
                             "exp_avg_sq": torch.zeros_like(p)}
    meta = {"method": "nash", "label": "nash", "distill": True, "deterministic": "global", "family": family.name,
            "teacher": str(TOKENIZER), "kept_decoder_layers": kept,
            "target_sparsity": cfg.prune.target_sparsity, "student_config": student.config.to_dict(),
            "teacher_config": teacher_config.to_dict(), "latency": None}
    with torch.device("meta"):
        meta["teacher_params"] = count_params(family.from_config(teacher_config), family)
    ckpt_dir = out / "checkpoints"
    if dist.is_rank_zero():
        ckpt.write_meta(ckpt_dir, meta)
    tag = ckpt.tag_for(1)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": 1, "best": {}}, save_latest=False)
    dist.barrier()
    fp32_bytes = sum(p.numel() * 4 for p in student.parameters())  # what finalize has to hold: the student
    if dist.is_rank_zero():
        ckpt.mark_complete(ckpt_dir, tag, {"step": 1, "best": {}, "world_size": dist.world_size(),
                                           "zero_stage": zero, "method": "nash"})
        (out / "bench.json").write_text(json.dumps({"student_fp32_bytes": fp32_bytes, "zero": zero,
                                                    "shape": shape, "k": k}))
    dist.barrier()
    return {"student_fp32_bytes": fp32_bytes}


# ------------------------------------------------------------------------------ measuring


def _env(threads: int) -> dict:
    from nash_ds.testing import offline_env

    return offline_env(drop=("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"),
                       OMP_NUM_THREADS=str(threads))


def _run_measured(cmd: list[str], *, cwd: Path, env: dict, log: Path) -> tuple[int, float, float]:
    """(exit code, peak RSS in bytes, wall seconds) of one child process."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, usage.ru_maxrss * 1024, time.perf_counter() - t0


def finalize_cmd(repo: Path, ckpt_dir: Path, out_dir: Path, *, export_dtype: str) -> list[str]:
    from nash_ds.testing import launch_command

    return launch_command(repo / "run.py", "finalize", f"finalize.checkpoint={ckpt_dir}", f"output_dir={out_dir}",
                          "prune.method=nash", f"model.tokenizer={TOKENIZER}", "data.max_eval_samples=4",
                          "finalize.check_batches=1", "generation.eval_batch_size=4",
                          f"model.export_dtype={export_dtype}", "overwrite=true")


def floor_rss(env: dict, work: Path) -> float:
    """Peak RSS of a process that only imports what the finalizer imports (the runtime's floor)."""
    code = ("import torch, transformers, deepspeed, datasets; from transformers import T5ForConditionalGeneration; "
            "import nash_ds.stages.finalize, nash_ds.data, nash_ds.masks")
    rc, peak, _ = _run_measured([sys.executable, "-c", code], cwd=REPO, env=env, log=work / "floor.log")
    assert rc == 0, (work / "floor.log").read_text()
    return peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="t5-large", choices=sorted(SHAPES))
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--zero", default="0,2")
    ap.add_argument("--repo", type=Path, action="append", default=None,
                    help="checkout(s) whose run.py finalizes (repeatable; default: this one)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--export-dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--write", type=Path, default=None, help="only write a checkpoint into this directory")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    stages = [int(z) for z in args.zero.split(",")]
    if args.write is not None:
        assert len(stages) == 1, "--write takes one --zero stage"
        write_checkpoint(args.write, shape=args.shape, k=args.k, zero=stages[0])
        return 0

    from nash_ds.testing import launch_command

    repos = [r.resolve() for r in (args.repo or [REPO])]
    work = args.work or Path(tempfile.mkdtemp(prefix="nash-finalize-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    env = _env(args.threads)
    rows = []
    try:
        floor = floor_rss(env, work)
        for zero in stages:
            ck = work / f"zero{zero}"
            if not (ck / "bench.json").is_file():
                shutil.rmtree(ck, ignore_errors=True)
                t0 = time.perf_counter()
                subprocess.run(launch_command(Path(__file__).resolve(), "--write", ck, "--shape", args.shape, "--k",
                                              args.k, "--zero", zero), cwd=REPO, env=env, check=True)
                print(f"wrote ZeRO-{zero} checkpoint in {time.perf_counter() - t0:.0f} s", flush=True)
            info = json.loads((ck / "bench.json").read_text())
            ckpt_bytes = sum(f.stat().st_size for f in (ck / "checkpoints").rglob("*.pt"))
            for repo in repos:
                out = work / f"out-zero{zero}-{len(rows)}"
                log = work / f"finalize-zero{zero}-{len(rows)}.log"
                cmd = finalize_cmd(repo, ck / "checkpoints", out, export_dtype=args.export_dtype)
                rc, peak, wall = _run_measured(cmd, cwd=repo, env=env, log=log)
                if rc != 0:
                    print(log.read_text()[-4000:], file=sys.stderr)
                    raise SystemExit(f"finalize exited {rc} ({' '.join(cmd)})")
                report = json.loads((out / "finalize" / "pruning_report.json").read_text())
                fp32 = info["student_fp32_bytes"]
                rows.append({"zero": zero, "repo": str(repo), "student_fp32_gb": fp32 / GB,
                             "checkpoint_files_gb": ckpt_bytes / GB, "peak_rss_gb": peak / GB,
                             "ratio": peak / fp32, "wall_s": wall, "floor_gb": floor / GB,
                             "encoder_sparsity": report["sparsity_vs_teacher"].get("encoder"),
                             "self_check": report["self_check"]["max_abs_logit_diff"], "command": " ".join(cmd)})
                shutil.rmtree(out, ignore_errors=True)
                print(f"ZeRO-{zero} {repo}: peak {peak / GB:.2f} GB", flush=True)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nfinalize peak RSS, {args.shape} NASH k={args.k}, {platform.node()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; import floor {floor / GB:.2f} GB")
    print("| checkpoint | finalizer | student fp32 (GB) | ckpt files (GB) | peak RSS (GB) | ratio | target "
          "| wall (s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| ZeRO-{r['zero']} | {r['repo']} | {r['student_fp32_gb']:.2f} | {r['checkpoint_files_gb']:.2f} | "
              f"{r['peak_rss_gb']:.2f} | {r['ratio']:.2f}x | 1.5x | {r['wall_s']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
