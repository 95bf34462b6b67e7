"""Command line: ``run.py <stage> [--config file.yaml] [key=value ...]``.

Parses arguments (``--config`` and overrides in any order around the stage), loads and validates
the config *before* any process group or model exists (so bad input fails fast and writes
nothing), then runs the stage on every rank. A user error (``errors.UserError``, or the config loader's
``ValueError``) ends in one ``nash-ds: error:`` line and exit 2 (``--debug`` adds the traceback); any other
exception is a bug: exit 1, its traceback and ``nash-ds: internal error in <stage>`` (``nash_ds.errors``).
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
    "profile": "nash_ds.stages.profile",
    "export": "nash_ds.stages.export",
}
"""Stage name -> module with ``run(cfg, *, stage_dir)``."""

log = logging.getLogger("nash_ds.cli")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other user error
        if "required: stage" in message:  # (argparse also names the optional overrides)
            message = f"a stage is required first: one of {', '.join(sorted(STAGES))} (e.g. run.py finetune)"
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


ERROR_GRACE_S = 5.0
"""How long a rank other than 0 waits before it reports its error (NASH_ERROR_GRACE_S)."""


def _fail(code: int, error: BaseException, *, debug: bool, rank_zero: bool = True) -> tuple[int, str]:
    """The exit code and the one-line report of ``error`` (rank 0 prints it at once, with the traceback under
    --debug; other ranks hand it to ``_report_late``)."""
    text = " ".join(str(error).split("\n")) if code == errors.EXIT_USER_ERROR else str(error)
    if not rank_zero:
        return code, f"nash-ds: error: [rank {os.environ.get('RANK', '?')}] {text}"
    if debug:
        traceback.print_exception(error)
    print(f"nash-ds: error: {text}", file=sys.stderr, flush=True)
    return code, ""


def _internal(stage: str, error: BaseException, *, rank_zero: bool = True) -> tuple[int, str]:
    """Exit 1 for an exception nash-ds did not raise on purpose: its traceback, then one line saying so (rank 0
    at once; other ranks after the grace period, as for ``_fail``)."""
    line = f"nash-ds: internal error in {stage} (please report): {type(error).__name__}: {error}"
    if not rank_zero:
        return errors.EXIT_INTERNAL_ERROR, f"{line} [rank {os.environ.get('RANK', '?')}]"
    traceback.print_exception(error)
    print(line, file=sys.stderr, flush=True)
    return errors.EXIT_INTERNAL_ERROR, ""


def _report_late(line: str, error: BaseException | None, *, debug: bool) -> None:
    """A rank other than 0 reports its error only after a grace period (and after leaving the process group):
    launchers (srun --kill-on-bad-exit, deepspeed, torchrun) stop every rank once one exits non-zero, so rank 0,
    which met the same error, says it once; an error only this rank met is still reported."""
    from nash_ds import stop

    if not line:
        return
    deadline = time.monotonic() + float(os.environ.get("NASH_ERROR_GRACE_S", ERROR_GRACE_S))
    while time.monotonic() < deadline:
        if stop.requested():  # the launcher is stopping this rank (SIGTERM) because another one exited
            return
        time.sleep(0.1)
    if debug and error is not None:
        traceback.print_exception(error)
    print(line, file=sys.stderr, flush=True)


def _stage_first(argv: list[str]) -> list[str]:
    """Overrides may also come before the stage (``run.py train.lr=1e-4 prune``): argparse takes the first
    positional for the stage, so the first token naming a stage (not an option's value) moves to the front."""
    for i, token in enumerate(argv):
        if token in STAGES and (i == 0 or argv[i - 1] not in ("--config", "--log-level")):
            return [token, *argv[:i], *argv[i + 1:]]
    return argv


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(_stage_first(list(sys.argv[1:] if argv is None else argv)))
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from nash_ds import log as nash_log

    nash_log.setup(args.log_level)
    from nash_ds.config import load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ValueError as e:
        code, late = _fail(errors.EXIT_USER_ERROR, e, debug=args.debug, rank_zero=nash_log.launch_rank() == 0)
        _report_late(late, e, debug=args.debug)
        return code
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from nash_ds import compat, dist, stop

    stop.install()
    compat.check_versions()
    dist.init_distributed()
    nash_log.quiet_library_progress()  # bars on rank 0's terminal only; none in files (Slurm, `> log`)
    t0 = time.perf_counter()
    code, late, failure = None, "", None
    try:
        run_stage(args.stage, cfg)
        log.info("%s finished in %.1f s", args.stage, time.perf_counter() - t0)
        code = 0
    except errors.UserError as e:
        failure = e
        code, late = _fail(errors.EXIT_USER_ERROR, e, debug=args.debug, rank_zero=dist.is_rank_zero())
    except errors.Preempted as e:
        log.warning("%s", e)
        code = errors.EXIT_PREEMPTED  # every rank stopped at the same point
    except (errors.SelfCheckError, errors.RankFailedError) as e:
        failure = e
        code, late = _fail(errors.EXIT_FAILED, e, debug=args.debug, rank_zero=dist.is_rank_zero())
    except Exception as e:  # a bug, ours or a library's (a ValueError inside torch too): show where
        failure = e
        code, late = _internal(args.stage, e, rank_zero=dist.is_rank_zero())
    finally:
        # after an error other ranks may not share, no final barrier: it could pair with another collective
        dist.shutdown(wait_for_others=code in (0, errors.EXIT_PREEMPTED))
    _report_late(late, failure, debug=args.debug or code == errors.EXIT_INTERNAL_ERROR)
    return code


def exit_process(code: int) -> None:
    """End the process with ``code`` without the interpreter's teardown (``run.py``'s exit).

    Objects still alive after ``destroy_process_group`` (after a 2-rank ZeRO-3 prune one DeepSpeed 0.19.8 engine
    survives ``gc.collect()``; what holds it was not found) are otherwise destroyed while the interpreter is being
    torn down, and a gloo thread can then abort the rank with SIGABRT ("terminate called without an active
    exception"; see pytorch/pytorch#179291) after the stage finished and wrote its outputs: the launcher reports
    the job failed.
    Python's exit handlers (logging, TensorBoard, temp files) still run first, and the streams are flushed."""
    import atexit

    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def run_stage(stage: str, cfg) -> dict:
    """Run ``stage`` on this rank (every rank calls it); returns the stage's result."""
    from nash_ds.stages import common

    module = importlib.import_module(STAGES[stage])
    return module.run(cfg, stage_dir=common.stage_dir(cfg, stage))
