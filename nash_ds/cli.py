"""Command line: ``run.py <stage> [--config file.yaml] [key=value ...]``.

Parses arguments (``--config`` and overrides in any order around the stage), loads and validates
the config *before* any process group or model exists (so bad input fails fast and writes
nothing), then runs the stage on every rank. Every failure ends in one ``nash-ds: error:`` line
and an exit code (``nash_ds.errors``); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
import traceback

from nash_ds import errors
from nash_ds.log import LEVELS

STAGES = {
    "finetune": "nash_ds.stages.finetune",
    "prune": "nash_ds.stages.prune",
    "finalize": "nash_ds.stages.finalize",
    "evaluate": "nash_ds.stages.evaluate",
    "pipeline": "nash_ds.stages.pipeline",
    "estimate": "nash_ds.stages.estimate",
}
"""Stage name -> module with ``run(cfg, *, stage_dir)``."""

log = logging.getLogger("nash_ds.cli")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other user error
        self.print_usage(sys.stderr)
        self.exit(errors.EXIT_USER_ERROR, f"nash-ds: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="run.py",
        description="nash-ds: NASH / CoFi / SFT structured pruning of encoder-decoder models on DeepSpeed.",
        epilog="Without --config the embedded demo runs (tiny T5 on the bundled dialogue-summary task).")
    p.add_argument("stage", choices=sorted(STAGES), help="what to run")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=1e-4 prune.decoder_layers=3")
    p.add_argument("--config", default=None, help="YAML file with the settings that differ from the defaults")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LEVELS, help="rank 0's log level")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _fail(code: int, error: BaseException, *, debug: bool, rank_zero: bool = True) -> int:
    """Report ``error`` in one line (rank 0), with its traceback under --debug; return the exit code."""
    if debug:
        traceback.print_exception(error)
    if rank_zero:
        text = " ".join(str(error).split("\n")) if code == errors.EXIT_USER_ERROR else str(error)
        print(f"nash-ds: error: {text}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from nash_ds import log as nash_log

    nash_log.setup(args.log_level)
    from nash_ds.config import load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ValueError as e:
        return _fail(errors.EXIT_USER_ERROR, e, debug=args.debug, rank_zero=nash_log.launch_rank() == 0)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from nash_ds import compat, dist, stop

    stop.install()
    compat.check_versions()
    dist.init_distributed()
    nash_log.quiet_library_progress()  # bars on rank 0's terminal only; none in files (Slurm, `> log`)
    t0 = time.perf_counter()
    code = None
    try:
        run_stage(args.stage, cfg)
        log.info("%s finished in %.1f s", args.stage, time.perf_counter() - t0)
        code = 0
    except ValueError as e:
        code = _fail(errors.EXIT_USER_ERROR, e, debug=args.debug, rank_zero=dist.is_rank_zero())
    except errors.Preempted as e:
        log.warning("%s", e)
        code = errors.EXIT_PREEMPTED  # every rank stopped at the same point
    except (errors.SelfCheckError, errors.RankFailedError) as e:
        code = _fail(errors.EXIT_FAILED, e, debug=args.debug, rank_zero=dist.is_rank_zero())
    finally:
        # after an error other ranks may not share, no final barrier: it could pair with another collective
        dist.shutdown(wait_for_others=code in (0, errors.EXIT_PREEMPTED))
    return code


def run_stage(stage: str, cfg) -> dict:
    """Run ``stage`` on this rank (every rank calls it); returns the stage's result."""
    from nash_ds.stages import common

    module = importlib.import_module(STAGES[stage])
    return module.run(cfg, stage_dir=common.stage_dir(cfg, stage))
