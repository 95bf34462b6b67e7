"""One logger for the whole package, writing on rank 0 only.

``setup(level)`` is called once by the CLI (``--log-level``); every module logs through
``logging.getLogger(__name__)`` (children of ``nash_ds``). Ranks other than 0 keep only errors, so
a multi-rank job prints each message once. Messages go to stderr as ``[nash-ds] message``.

Progress: a bar on a terminal, plain lines in a file (``Progress``, ``quiet_library_progress``).
"""

from __future__ import annotations

import logging
import os
import sys
import time

from nash_ds.errors import UserError

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ROOT = "nash_ds"
_log = logging.getLogger(__name__)


def launch_rank() -> int:
    """The global rank as the launcher set it (RANK; 0 without a launcher), before any process group."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def setup(level: str = "INFO") -> logging.Logger:
    """Configure the ``nash_ds`` logger: ``level`` on rank 0, errors only elsewhere."""
    level = level.upper()
    if level not in LEVELS:
        raise UserError(f"--log-level must be one of {', '.join(LEVELS)}, got {level!r}")
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[nash-ds] %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level) if launch_rank() == 0 else logging.ERROR)
    logger.propagate = False
    return logger


# --------------------------------------------------------------------------- progress

PLAIN_KEYS = (("loss", "loss", ".4f"), ("expected_sparsity/encoder", "exp. sparsity enc", ".3f"),
              ("expected_sparsity/model", "model", ".3f"), ("target_sparsity", "target", ".3f"),
              ("expected_speedup", "exp. speedup", ".2f"))
"""(scalar, label, format) shown in a plain progress line when the step logged it."""


def progress_bars() -> bool:
    """Whether this process draws progress bars: rank 0 with stderr on a terminal. Elsewhere (a file, a
    pipe, Slurm's output) a bar's carriage-return redraws become one enormous line."""
    return launch_rank() == 0 and sys.stderr.isatty()


def quiet_library_progress() -> None:
    """Turn off the progress bars of datasets (Map, Generating), transformers (Loading weights, Writing model
    shards) and huggingface_hub where ``progress_bars()`` is False; their log messages stay."""
    if progress_bars():
        return
    import datasets
    import huggingface_hub.utils
    import transformers.utils.logging

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def progress_line(desc: str, step: int, total: int, scalars: dict[str, float], *, lr: float | None,
                  eta_s: float | None) -> str:
    """``prune step 40/400 (10%): loss 0.6154, exp. sparsity enc 0.120, ..., lr 2.0e-03, 1234 tok/s, ETA 1:40``."""
    parts = [f"{label} {scalars[key]:{fmt}}" for key, label, fmt in PLAIN_KEYS if key in scalars]
    if lr is not None:
        parts.append(f"lr {lr:.1e}")
    if "tokens_per_sec" in scalars:
        parts.append(f"{scalars['tokens_per_sec']:.0f} tok/s")
    if eta_s is not None:
        parts.append(f"ETA {_duration(eta_s)}")
    return f"{desc} step {step}/{total} ({100 * step / max(1, total):.0f}%): " + ", ".join(parts)


class Progress:
    """The training progress of rank 0: a tqdm bar on a terminal; otherwise one plain log line per logging
    step (``progress_line``), so a log file gets no carriage-return redraws."""

    def __init__(self, *, total: int, initial: int, desc: str):
        self.total, self.desc, self.start = total, desc, initial
        self.t0 = time.perf_counter()
        self.bar = None
        if progress_bars():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

    def step(self, loss: float) -> None:
        """After every optimizer step."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def logged(self, step: int, scalars: dict[str, float], *, lr: float | None = None) -> None:
        """At a logging step: the plain line (nothing with a bar, which shows the same)."""
        if self.bar is not None:
            return
        done = step - self.start
        eta = (time.perf_counter() - self.t0) / done * (self.total - step) if done > 0 else None
        _log.info("%s", progress_line(self.desc, step, self.total, scalars, lr=lr, eta_s=eta))

    def write(self, message: str) -> None:
        """A message that must not break the bar (evaluation results)."""
        if self.bar is not None:
            self.bar.write(message)
        else:
            _log.info("%s", message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
