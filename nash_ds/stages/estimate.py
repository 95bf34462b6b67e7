"""``estimate``: per-rank memory of a finetune or prune run for each ds_config, and the one to use.

    python run.py estimate estimate.model=t5-xl estimate.stage=prune estimate.world_size=16 \\
        estimate.memory_gb=80 data.max_source_length=512 data.max_target_length=128

The model behind it is ``nash_ds.memory``; this stage prints its table on rank 0.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nash_ds import stop
from nash_ds.config import RunConfig

log = logging.getLogger(__name__)


def run(cfg: RunConfig, *, stage_dir: Path | None = None) -> dict[str, Any]:
    """Estimate (on every rank: it builds meta models only) and log the table; writes nothing."""
    from nash_ds.memory import estimate, format_table

    result = estimate(cfg, cfg.estimate)
    stop.at("estimate", "estimate")
    log.info("%s", format_table(result))
    return result
