"""Command line: ``run.py <stage> [--config file.yaml] [key=value ...]``.

Parses arguments, loads and validates the config *before* any process group or model exists
(so bad input fails fast and writes nothing), then runs the stage on every rank.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

STAGES = ("finetune", "prune", "finalize", "evaluate", "pipeline", "estimate")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run.py",
        description="nash-ds: NASH / CoFi / SFT structured pruning of encoder-decoder models on DeepSpeed.",
        epilog="Without --config the embedded demo runs (tiny T5 on the bundled dialogue-summary task).")
    p.add_argument("stage", choices=STAGES, help="what to run")
    p.add_argument("--config", default=None, help="YAML file with the settings that differ from the defaults")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=1e-4 prune.decoder_layers=3")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from nash_ds.config import load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ValueError as e:
        print(f"nash-ds: error: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from nash_ds import dist
    from nash_ds.trainer import install_preemption_handlers

    install_preemption_handlers()
    dist.init_distributed()
    if not dist.is_rank_zero():
        import datasets

        datasets.disable_progress_bars()
    t0 = time.perf_counter()
    try:
        result = run_stage(args.stage, cfg)
    except ValueError as e:
        if dist.is_rank_zero():
            print(f"nash-ds: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from nash_ds.stages.finalize import SelfCheckError

        if not isinstance(e, SelfCheckError) and "another rank failed" not in str(e):
            raise
        if dist.is_rank_zero():
            print(f"nash-ds: error: {e}", file=sys.stderr)
        return 3
    if dist.is_rank_zero() and args.stage != "pipeline":
        print(f"[nash-ds] {args.stage} finished in {time.perf_counter() - t0:.1f} s", flush=True)
    dist.shutdown()
    return 0 if result is not None else 1


def run_stage(stage: str, cfg):
    from nash_ds.stages import common

    if stage == "finetune":
        from nash_ds.stages import finetune

        return finetune.run(cfg, stage_dir=common.stage_dir(cfg, "finetune"))
    if stage == "prune":
        from nash_ds.stages import prune

        return prune.run(cfg, stage_dir=common.stage_dir(cfg, "prune"))
    if stage == "finalize":
        from nash_ds.stages import finalize

        return finalize.run(cfg, stage_dir=common.stage_dir(cfg, "finalize"))
    if stage == "evaluate":
        from nash_ds.stages import evaluate

        return evaluate.run(cfg, stage_dir=common.stage_dir(cfg, "evaluate"))
    if stage == "pipeline":
        from nash_ds.stages import pipeline

        return pipeline.run(cfg)
    if stage == "estimate":
        from nash_ds import estimate

        return estimate.run(cfg)
    raise AssertionError(stage)
