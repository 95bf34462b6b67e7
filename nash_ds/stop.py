"""Stop signals: SIGUSR1 (Slurm, before the time limit) and SIGTERM ask every stage to stop cleanly.

``install()`` (the CLI, before any model loads) turns the signals into a flag; long work polls it at
safe points: the trainer after each optimizer step (checkpoint, then exit 75), the finalizer and the
evaluator between their steps (``check(where)`` raises ``Preempted``: nothing is published). The
job then exits ``EXIT_PREEMPTED`` (75) and Slurm requeues it; the rerun finishes the work.
"""

from __future__ import annotations

import os
import signal

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


def requested() -> bool:
    """Whether a stop signal arrived on this process."""
    return _STATE["requested"]


def check(where: str) -> None:
    """Raise ``Preempted`` if a stop was asked for (this rank only: callers on several ranks agree first)."""
    if _STATE["requested"]:
        raise Preempted(f"stopped by {_STATE['signal']} during {where}; nothing was published; rerun the same "
                        "command to finish (Slurm requeues it)")


def stop_point(name: str) -> None:
    """A test hook: ``NASH_STOP_AT=<name>`` asks for a stop when the run reaches ``name`` (as SIGTERM would)."""
    if os.environ.get("NASH_STOP_AT") == name:
        request(f"NASH_STOP_AT={name}")
