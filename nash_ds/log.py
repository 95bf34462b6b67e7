"""One logger for the whole package, writing on rank 0 only.

``setup(level)`` is called once by the CLI (``--log-level``); every module logs through
``logging.getLogger(__name__)`` (children of ``nash_ds``). Ranks other than 0 keep only errors, so
a multi-rank job prints each message once. Messages go to stderr as ``[nash-ds] message``.
"""

from __future__ import annotations

import logging
import os
import sys

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ROOT = "nash_ds"


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
        raise ValueError(f"--log-level must be one of {', '.join(LEVELS)}, got {level!r}")
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[nash-ds] %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level) if launch_rank() == 0 else logging.ERROR)
    logger.propagate = False
    return logger
