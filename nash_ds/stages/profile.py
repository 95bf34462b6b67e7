"""``profile``: the latency model of a model shape on this machine, for ``prune.target_speedup``.

    python run.py profile profile.model=t5-base evaluate.batch_sizes=[8] evaluate.device=cuda evaluate.dtype=bfloat16

Times probe models of the shape (random weights: speed does not depend on the values) with the
``evaluate.*`` timing settings, fits ``nash_ds.latency_model.LatencyModel`` and adds it to
``<output_dir>/profile/latency.json`` (keyed by shape, device, dtype, batch, lengths and threads; a
key already there is reused). Measure it on the deployment machine and hand the file to the training
run with ``prune.latency_profile=<latency.json>``. Rank 0 works, other ranks wait.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nash_ds import dist
from nash_ds.config import RunConfig

log = logging.getLogger(__name__)

PROFILE_FILE = "latency.json"


def model_to_profile(cfg: RunConfig) -> str:
    """profile.model, else the run's teacher when it exists, else model.name_or_path."""
    if cfg.profile.model:
        return cfg.profile.model
    teacher = Path(cfg.prune.teacher)
    return str(teacher) if (teacher / "config.json").is_file() else cfg.model.name_or_path


def run(cfg: RunConfig, *, stage_dir: Path) -> dict:
    from nash_ds.latency_model import format_profile, profile
    from nash_ds.models import config_of

    name = model_to_profile(cfg)
    config = config_of(name)  # bad names fail here, before anything is written

    def work() -> dict:
        model = profile(config, cfg.evaluate, seed=cfg.seed, cache=stage_dir / PROFILE_FILE)
        log.info("profile of %s -> %s\n%s", name, stage_dir / PROFILE_FILE, format_profile(model))
        return model.to_dict()

    return {"stage": "profile", "model": name, "profile": dist.on_rank_zero(work),
            "path": str(stage_dir / PROFILE_FILE)}
