"""``finetune``: dense fine-tuning (the teacher), or the final fine-tune of a pruned export.

Any HF directory works as the starting point, including a pruned export with per-layer widths;
the export keeps the model's class and shapes. With ``train.distill=true`` the loss adds logit
KD from ``prune.teacher``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nash_ds import dist
from nash_ds.config import RunConfig
from nash_ds.stages import common


def model_param_groups(model: torch.nn.Module, *, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups for model weights: no decay on biases and norms."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        ndim = len(dist.full_shape(p))  # ZeRO-3 partitions are 1-d placeholders
        (no_decay if ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "model", "schedule": "model"}]
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": "model_no_decay",
                       "schedule": "model"})
    return groups


def export_model(template: torch.nn.Module, state: dict[str, torch.Tensor], out_dir: Path, *, tokenizer,
                 dtype: str, prefix: str = "") -> None:
    """Rebuild ``template``'s class from its config, load the consolidated weights, save atomically."""
    from nash_ds.export import save_hf_dir

    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    from nash_ds.models import load_full_state

    with torch.device("meta"):
        model = type(template)(template.config)
    load_full_state(model, state, what="consolidated checkpoint")
    model.generation_config = template.generation_config
    save_hf_dir(model, tokenizer, out_dir, dtype=dtype)


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
        return loss, {"loss": float(loss), "ce": float(out.loss), "kd": float(kd)}

    def generation_model(self, engine):
        return engine.module

    def after_step(self, engine, step):
        return {}

    def export(self, state, out_dir: Path) -> None:
        export_model(self.module, state, out_dir, tokenizer=self.tokenizer, dtype=self.cfg.model.export_dtype)


def run(cfg: RunConfig, *, stage_dir: Path) -> dict:
    from nash_ds.data import Seq2SeqCollator, build_datasets
    from nash_ds.models import load_model
    from nash_ds.trainer import Trainer

    common.check_not_finished(cfg, stage_dir)
    ds = dist.resolve_ds_config(dist.load_ds_config(cfg.train.ds_config), micro_batch_size=cfg.train.micro_batch_size,
                                grad_accum=cfg.train.grad_accum, grad_clip=cfg.train.grad_clip,
                                num_ranks=dist.world_size())
    tokenizer = common.load_tokenizer(common.tokenizer_source(cfg))
    data = build_datasets(cfg.data, tokenizer, splits=("train", cfg.data.eval_split), seed=cfg.seed)
    preset = cfg.model.name_or_path.startswith("preset:")
    with common.partitioned_build(ds, cfg.model.name_or_path):
        model = load_model(cfg.model.name_or_path, seed=cfg.seed,
                           **(common.model_kwargs_from_tokenizer(tokenizer) if preset else {}))
    if dist.is_rank_zero() and dist.is_partitioned(model):
        print(f"[nash-ds] finetune: {cfg.model.name_or_path} loaded partitioned (ZeRO-3)", flush=True)
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
    n_params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())
    return {"stage": "finetune", "model": str(stage_dir / "model"), "params": n_params, **result}
