"""Stop signals: SIGUSR1 (Slurm, before the time limit) and SIGTERM ask every stage to stop cleanly.

``install()`` (the CLI, before any model loads) turns the signals into a flag; long work polls it at
safe points: the trainer after each optimizer step (checkpoint, then exit 75); the finalizer after reading
the checkpoint, after its self-check and before its rename; the evaluator after every generation batch
and before its rename; the profiler between its probe groups; estimate before its table; the pipeline
between stages (``at(name, where)`` / ``check(where)`` raise ``Preempted``: nothing is published). The
job then exits ``EXIT_PREEMPTED`` (75) and Slurm requeues it; the rerun finishes the work.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from nash_ds.errors import Preempted

_STATE = {"requested": False, "signal": None}
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def _on_signal(signum, frame) -> None:
    _STATE["requested"] = True
    _STATE["signal"] = signal.Signals(signum).name


def install() -> None:
    """SIGUSR1 / SIGTERM set the stop flag instead of killing the process."""
    for sig in SIGNALS:
        signal.signal(sig, _on_signal)


def ignore() -> None:
    """Ignore further stop signals (while exiting after a stop: a late repeat must not kill the exit)."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def request(reason: str = "requested") -> None:
    """Ask for a stop as a signal would (tests: NASH_STOP_AT_STEP)."""
    _STATE["requested"] = True
    _STATE["signal"] = reason


def reason() -> str | None:
    """The signal's name (or the test hook) that asked for the stop."""
    return _STATE["signal"]


def requested() -> bool:
    """Whether a stop signal arrived on this process."""
    return _STATE["requested"]


def check(where: str) -> None:
    """Raise ``Preempted`` if a stop was asked for (this rank only: callers on several ranks agree first)."""
    if _STATE["requested"]:
        raise Preempted(f"stopped by {_STATE['signal']} during {where}; nothing was published; rerun the same "
                        "command to finish (Slurm requeues it)")


def at(name: str, where: str) -> None:
    """A safe point of a stage that is not training: the test hook ``name`` (``stop_point``), then ``check``."""
    stop_point(name)
    check(where)


def pause_point(name: str) -> None:
    """A test hook: with ``NASH_PAUSE_AT=<name>`` and ``NASH_PAUSE_DIR=<dir>``, the first run (of a job and its
    requeues) to reach ``name`` writes ``<dir>/<name>.rank<r>`` on each rank and waits up to ``NASH_PAUSE_S``
    seconds (30) or until a stop signal arrives, so that a test can signal or kill a rank exactly there."""
    if os.environ.get("NASH_PAUSE_AT") != name or not os.environ.get("NASH_PAUSE_DIR"):
        return
    marker = Path(os.environ["NASH_PAUSE_DIR"]) / f"{name}.rank{os.environ.get('RANK', '0')}"
    if marker.exists():
        return
    marker.write_text(str(os.getpid()))
    deadline = time.monotonic() + float(os.environ.get("NASH_PAUSE_S", "30"))
    while time.monotonic() < deadline and not requested():
        time.sleep(0.05)


def stop_point(name: str) -> None:
    """A test hook: ``NASH_STOP_AT=<name>`` asks for a stop when the run reaches ``name`` (as SIGTERM would)."""
    if os.environ.get("NASH_STOP_AT") == name:
        request(f"NASH_STOP_AT={name}")
