"""``pipeline``: finetune -> prune -> finalize -> final fine-tune -> evaluate, in order.

A stage whose output is already finished is skipped, so a pipeline that stopped (or was
preempted) picks up where it was; ``overwrite=true`` reruns everything. At the end rank 0
logs a table a person can read: the teacher, the finalize export and the final model side by side
(metric, parameters, generation time). The final fine-tune distils the teacher's logits, has its own
lr and a short warm-up, and evaluates its starting model at step 0: the published model is never
worse on the validation metric than the finalize export it started from.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

from nash_ds import dist, stop
from nash_ds.config import RunConfig
from nash_ds.errors import Preempted
from nash_ds.stages import common

log = logging.getLogger(__name__)


def _stage_cfgs(cfg: RunConfig) -> dict[str, RunConfig]:
    out = Path(cfg.output_dir)
    p = cfg.pipeline
    fin = copy.deepcopy(cfg)

    prune = copy.deepcopy(cfg)
    prune.prune.teacher = str(out / "finetune" / "model")
    prune.model.tokenizer = None
    prune.train.max_steps = p.prune_max_steps or cfg.train.max_steps
    prune.train.lr = p.prune_lr or cfg.train.lr
    prune.train.eval_every = min(cfg.train.eval_every, prune.train.max_steps) if cfg.train.eval_every else 0
    prune.train.warmup_steps = min(cfg.train.warmup_steps, prune.train.max_steps)

    final = copy.deepcopy(cfg)
    final.model.name_or_path = str(out / "finalize" / "model")
    final.model.tokenizer = None
    final.prune.teacher = str(out / "finetune" / "model")
    final.train.max_steps = p.final_max_steps or cfg.train.max_steps
    final.train.lr = p.final_lr or cfg.train.lr
    final.train.distill = p.final_distill
    final.train.eval_every = min(cfg.train.eval_every, final.train.max_steps) if cfg.train.eval_every else 0
    final.train.warmup_steps = min(p.final_warmup_steps, final.train.max_steps)
    final.train.eval_at_start = True  # the finalize export competes: the final model is never worse on eval
    return {"finetune": fin, "prune": prune, "finalize": prune, "final": final}


def _finished(stage: str, out: Path) -> bool:
    return (out / stage / "model").exists()


def run(cfg: RunConfig, *, stage_dir: Path | None = None) -> dict:
    """Every stage in order under ``cfg.output_dir`` (``stage_dir`` is unused: each stage has its own)."""
    from nash_ds.metrics import check_metric_for_best
    from nash_ds.stages import finalize, finetune, prune

    out = Path(cfg.output_dir)
    common.check_output_dir(cfg, out / "finetune")
    check_metric_for_best(cfg.train.metric_for_best, cfg.data.task, greater_is_better=cfg.train.greater_is_better)
    cfgs = _stage_cfgs(cfg)
    steps = [("finetune", finetune.run), ("prune", prune.run), ("finalize", finalize.run)]
    if cfg.pipeline.final_finetune:
        steps.append(("final", finetune.run))
    results, times = {}, {}
    for name, fn in steps:
        if _finished(name, out) and not cfg.overwrite:
            log.info("pipeline: %s is finished, skipping", out / name)
            continue
        log.info("pipeline: stage %s -> %s", name, out / name)
        t0 = time.perf_counter()
        results[name] = fn(cfgs[name], stage_dir=common.stage_dir(cfg, name))
        times[name] = time.perf_counter() - t0
        stop.stop_point(f"pipeline:{name}")
        if dist.any_rank(stop.requested()):  # between stages: the finished ones stay, the rerun skips them
            raise Preempted(f"stopped by {stop.reason()} after the pipeline's {name} stage; rerun the same "
                            "command to finish (Slurm requeues it)")
        dist.barrier()
    table = None
    if cfg.pipeline.evaluate:
        from nash_ds.stages import evaluate

        models = {"teacher": out / "finetune" / "model", "finalize": out / "finalize" / "model"}
        if cfg.pipeline.final_finetune:
            models["final"] = out / "final" / "model"
        table = evaluate.compare(cfg, models=models, reference=out / "finetune" / "model",
                                 stage_dir=common.stage_dir(cfg, "evaluate"))
    log.info("stage times: %s", ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    if table:
        log.info("\n%s", table)
    return {"stage": "pipeline", "results": results, "times": times, "table": table}
