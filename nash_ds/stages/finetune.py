"""``finetune``: dense fine-tuning (the teacher), or the final fine-tune of a pruned export.

Any HF directory works as the starting point, including a pruned export with per-layer widths;
the export keeps the model's class and shapes. With ``train.distill=true`` the loss adds logit
KD from ``prune.teacher``.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import torch

from nash_ds import dist
from nash_ds.config import RunConfig
from nash_ds.stages import common
from nash_ds.trainer import model_param_groups

log = logging.getLogger(__name__)


class FinetuneTask:
    """Cross-entropy fine-tuning, optionally with logit distillation from a teacher."""

    method = "finetune"

    def __init__(self, model, *, cfg: RunConfig, tokenizer, teacher=None):
        self.module = model
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.teacher = teacher

    def param_groups(self) -> list[dict]:
        return model_param_groups(self.module, lr=self.cfg.train.lr, weight_decay=self.cfg.train.weight_decay)

    def training_loss(self, engine, batch, step):
        out = engine(**batch)
        if self.teacher is None:
            return out.loss, {"loss": out.loss.item()}
        from nash_ds.distill import kd_loss

        with torch.no_grad():
            t_out = self.teacher(**batch)
        d = self.cfg.distill
        kd = kd_loss(out.logits, t_out.logits, batch["labels"], temperature=d.temperature)
        loss = d.ce_weight * out.loss + d.kd_weight * kd
        # logged values are detached: float() of a tensor that needs grad warns (torch 2.13)
        return loss, {"loss": float(loss.detach()), "ce": float(out.loss.detach()), "kd": float(kd.detach())}

    def after_optimizer_step(self, engine) -> None:
        pass

    def step_logs(self, engine, step: int) -> dict:
        return {}

    def generation_model(self, engine):
        return engine.module

    def eval_context(self, engine):
        return nullcontext()

    def eval_extras(self, engine) -> dict:
        return {}

    def eligible_for_best(self, metrics: dict) -> bool:
        return True

    def export(self, state, out_dir: Path) -> None:
        from nash_ds.export import export_model

        export_model(self.module, state, out_dir, tokenizer=self.tokenizer, dtype=self.cfg.model.export_dtype)


def run(cfg: RunConfig, *, stage_dir: Path) -> dict:
    from nash_ds.data import Seq2SeqCollator
    from nash_ds.models import load_model
    from nash_ds.trainer import Trainer

    models = {"model.name_or_path": cfg.model.name_or_path, **({"prune.teacher": cfg.prune.teacher}
                                                                if cfg.train.distill else {})}
    inputs = common.set_up_training(cfg, stage_dir, method=FinetuneTask.method, models=models,
                                    tokenizer_source=common.tokenizer_source(cfg))
    ds, tokenizer, data = inputs.ds, inputs.tokenizer, inputs.data
    preset = cfg.model.name_or_path.startswith("preset:")
    with common.partitioned_build(ds, cfg.model.name_or_path):
        model = load_model(cfg.model.name_or_path, seed=cfg.seed,
                           **(common.model_kwargs_from_tokenizer(tokenizer) if preset else {}))
    if dist.is_partitioned(model):
        log.info("finetune: %s loaded partitioned (ZeRO-3)", cfg.model.name_or_path)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    teacher = None
    if cfg.train.distill:
        with common.partitioned_build(ds, cfg.prune.teacher):
            teacher = load_model(cfg.prune.teacher)
        teacher = dist.inference_engine(teacher, ds=ds)
    common.open_stage_dir(cfg, stage_dir)
    task = FinetuneTask(model, cfg=cfg, tokenizer=tokenizer, teacher=teacher)
    trainer = Trainer(cfg=cfg, stage_dir=stage_dir, task=task, tokenizer=tokenizer, train_set=data["train"],
                      eval_set=data[cfg.data.eval_split], collator=Seq2SeqCollator(tokenizer), ds_config=ds)
    result = trainer.fit()
    return {"stage": "finetune", "model": str(stage_dir / "model"), **result}
