"""``prune``: learn masks (nash, cofi) or train the decoder cut alone (sft), with distillation.

The student is a copy of the fine-tuned teacher with its decoder cut to the chosen layers; masks,
Lagrange multipliers and the hidden-state projections are parameters of one wrapper module, so
one DeepSpeed engine (and its ZeRO partitioning) holds them all, with three learning rates.
Everything that touches those parameters runs inside the wrapper's forward, so ZeRO-3 gathers
them. The mask lifecycle (``masks.Masking``) is driven from here and from the trainer.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

from nash_ds import checkpoint as ckpt
from nash_ds import dist
from nash_ds.config import RunConfig
from nash_ds.distill import BlockOutputs, identity_linear, kd_loss, masked_mse
from nash_ds.errors import UserError
from nash_ds.lagrangian import Lagrangian, target_sparsity
from nash_ds.masks import Masking
from nash_ds.models.base import DEFAULT_DECODER_LAYERS
from nash_ds.stages import common
from nash_ds.trainer import model_param_groups

log = logging.getLogger(__name__)


def _num(x) -> float:
    return float(x.detach()) if torch.is_tensor(x) else float(x)


class PruneModule(nn.Module):
    """Student + masks + Lagrangian + distillation projections; forward returns (loss, logs).

    ``Masking.register`` names the student and the masks (the checkpoint's key prefixes are its own).
    """

    def __init__(self, student, *, family, masking: Masking, cfg: RunConfig, kept_decoder_layers: list[int],
                 latency=None):
        """``latency``: a ``LatencyTarget`` (nash with target_speedup): the Lagrangian then holds the expected
        latency at 1/X of the dense model's instead of the encoder's parameter sparsity at its target."""
        super().__init__()
        self.latency = latency
        self.masking = masking
        masking.register(self, student)  # self.student, and the MaskSet
        self.lagrangian = Lagrangian() if masking.enabled else None
        d = family.d_model(student.config)
        self.enc_proj = identity_linear(d)
        self.dec_proj = identity_linear(d)
        self.cfg = cfg
        self.family = family
        self.kept = kept_decoder_layers
        self.enc_out = BlockOutputs(family.layers(student, "encoder"))
        self.dec_out = BlockOutputs(family.layers(student, "decoder"))
        self.target_key = "encoder" if cfg.prune.method == "nash" else "model"

    def forward(self, batch: dict, teacher: dict | None = None, step: int = 0):
        logs: dict[str, float] = {}
        loss = torch.zeros((), device=batch["input_ids"].device)
        if self.masking.enabled:
            stats = self.masking.sample()  # samples the gates the hooks apply; ZeRO-3 gathers log_alpha here
            expected = stats["expected_sparsity"]
            warmup = self.cfg.prune.sparsity_warmup_steps
            if self.latency is not None and self.latency.target_speedup is not None:
                alive = stats["alive"]
                frac = self.latency.expected_fraction(alive["encoder_heads"], alive["encoder_ffn"])
                target = self.latency.fraction_target(step, warmup)
                penalty = self.lagrangian(frac, target)
                logs.update({"expected_speedup": self.latency.speedup_at(_num(frac)),
                             "target_speedup": self.latency.speedup_at(target)})
            else:
                target = target_sparsity(step, final=self.cfg.prune.target_sparsity, warmup_steps=warmup)
                penalty = self.lagrangian(expected[self.target_key], target)
                logs["target_sparsity"] = target
            loss = loss + penalty
            logs["lagrangian"] = _num(penalty)
            logs.update(self.masking.sample_logs(stats))
        out = self.student(**batch)
        d = self.cfg.distill
        if teacher is None or (d.kd_weight == 0 and d.hidden_weight == 0):
            loss = loss + out.loss
            logs["ce"] = _num(out.loss)
        else:
            kd = kd_loss(out.logits, teacher["logits"], batch["labels"], temperature=d.temperature)
            enc_keep = batch["attention_mask"].bool()
            dec_keep = batch["labels"] != -100
            hid_enc = sum(masked_mse(self.enc_proj(s), t, enc_keep)
                          for s, t in zip(self.enc_out.outputs, teacher["encoder"]))
            hid_dec = sum(masked_mse(self.dec_proj(s), teacher["decoder"][j], dec_keep)
                          for s, j in zip(self.dec_out.outputs, self.kept))
            hidden = hid_enc + hid_dec
            loss = loss + d.ce_weight * out.loss + d.kd_weight * kd + d.hidden_weight * hidden
            logs.update({"ce": _num(out.loss), "kd": _num(kd), "hidden": _num(hidden),
                         "hidden_encoder": _num(hid_enc), "hidden_decoder": _num(hid_dec)})
        if self.lagrangian is not None:
            logs["lambda_1"], logs["lambda_2"] = (_num(x) for x in self.lagrangian.lambdas.detach())
        self.enc_out.clear()
        self.dec_out.clear()
        logs["loss"] = _num(loss)
        return loss, logs


class PruneTask:
    """Trainer task for nash / cofi / sft."""

    def __init__(self, module: PruneModule, *, masking: Masking, cfg: RunConfig, tokenizer, teacher,
                 teacher_family, meta: dict):
        """``teacher``: the frozen teacher to distil from, or None (CE only: sft without sft_distill)."""
        self.module = module
        self.masking = masking
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.teacher = teacher
        self.method = cfg.prune.method
        self.meta = meta
        if teacher is not None:
            self.t_enc = BlockOutputs(teacher_family.layers(teacher, "encoder"))
            self.t_dec = BlockOutputs(teacher_family.layers(teacher, "decoder"))
        self._figures_at: int | None = None  # the step the mask figures were last drawn

    def param_groups(self) -> list[dict]:
        m, p = self.module, self.cfg.prune
        groups = model_param_groups(m.student, lr=self.cfg.train.lr, weight_decay=self.cfg.train.weight_decay)
        groups.append({"params": list(m.enc_proj.parameters()) + list(m.dec_proj.parameters()),
                       "lr": self.cfg.train.lr, "weight_decay": 0.0, "name": "distill_proj", "schedule": "model"})
        if self.masking.enabled:
            # no momentum (beta1 = 0) for masks and lambdas: momentum delays the Lagrangian's feedback and
            # makes the sparsity overshoot and oscillate around its target
            groups.append({"params": self.masking.parameters(), "lr": p.mask_lr, "weight_decay": 0.0,
                           "betas": (0.0, 0.999), "name": "masks", "schedule": "constant"})
            groups.append({"params": list(m.lagrangian.parameters()), "lr": p.lambda_lr, "weight_decay": 0.0,
                           "betas": (0.0, 0.999), "name": "lambdas", "schedule": "constant"})
        return groups

    def _teacher_outputs(self, batch) -> dict | None:
        if self.teacher is None:
            return None
        with torch.no_grad():
            out = self.teacher(**batch)
        res = {"logits": out.logits, "encoder": list(self.t_enc.outputs), "decoder": list(self.t_dec.outputs)}
        self.t_enc.clear()
        self.t_dec.clear()
        return res

    def training_loss(self, engine, batch, step):
        return engine(batch, self._teacher_outputs(batch), step)

    def after_optimizer_step(self, engine) -> None:
        self.masking.after_optimizer_step()

    def generation_model(self, engine):
        return engine.module.student

    def eval_context(self, engine):
        return self.masking.evaluation()  # the deterministic masks of the fp32 masters, as finalize builds them

    def eval_extras(self, engine) -> dict:
        if not self.masking.enabled:
            return {}
        extras, masks = self.masking.eval_logs()
        if self.module.latency is not None:
            extras["predicted_speedup"] = self.module.latency.predicted_speedup(masks["encoder_heads"],
                                                                                masks["encoder_ffn"])
        return extras

    def eligible_for_best(self, metrics: dict) -> bool:
        """Only checkpoints whose deterministic masks reached the target can be best: the sparsity within 0.02,
        or with target_speedup a predicted speedup from 2% below to 5% above the target (an overshoot during the
        warm-up is faster than asked, and usually worse)."""
        if not self.masking.enabled:
            return True
        latency = self.module.latency
        if latency is not None and latency.target_speedup is not None:
            x = latency.target_speedup
            return 0.98 * x <= metrics.get("predicted_speedup", 0.0) <= 1.05 * x
        key = f"sparsity/{self.module.target_key}"
        return metrics.get(key, 0.0) >= self.cfg.prune.target_sparsity - 0.02

    def step_logs(self, engine, step) -> dict:
        masks = self.masking.step_logs()  # collective
        if masks is None:
            return {}
        summary, det, alive = masks.scalars, masks.deterministic, masks.alive
        if self.module.latency is not None:
            summary["predicted_speedup"] = self.module.latency.predicted_speedup(det["encoder_heads"],
                                                                                 det["encoder_ffn"])
        summary.update(masks.kept_units())
        if dist.is_rank_zero() and mask_figures_due(step, self._figures_at, self.cfg.train):
            from nash_ds.plot import mask_images

            self._figures_at = step
            summary["images"] = mask_images({k: v.float().cpu() for k, v in alive.items()},
                                            {k: v.float().cpu() for k, v in det.items()})
        return summary

    def export(self, state, out_dir: Path) -> None:
        """prune/model: the student (decoder cut, unpruned), its masks, and the run's metadata."""
        import json

        from nash_ds.export import atomic_dir, export_model

        student_state, mask_state = Masking.split_state(dict(state))
        with atomic_dir(out_dir, overwrite=False) as tmp:
            export_model(self.module.student, student_state, tmp / "student", tokenizer=self.tokenizer,
                         dtype="float32")
            Masking.save_masks(mask_state, tmp)
            (tmp / ckpt.META_FILE).write_text(json.dumps(self.meta, indent=1))


def mask_figures_due(step: int, last: int | None, train) -> bool:
    """Whether a logging step draws the mask figures (~0.2 s each): the first one, then one per
    ``train.eval_every`` steps (per 10 logging steps without evaluation), and the last step."""
    every = train.eval_every or 10 * train.log_every
    return step == train.max_steps or last is None or step // every > last // every


def build_student(cfg: RunConfig, teacher, family, ds: dict, kept: list[int]):
    """The student with the decoder cut to ``kept`` teacher layers.

    A whole teacher is copied (``family.make_student``); a ZeRO-3-partitioned one is never whole
    on any rank, so the student is built partitioned from its config and filled from the teacher
    tensor by tensor (``copy_student``).
    """
    if dist.is_partitioned(teacher):
        return copy_student(teacher, family, kept, ds=ds)
    return family.make_student(teacher, kept)


def copy_student(teacher, family, kept: list[int], *, ds: dict):
    """``family.make_student(teacher, kept)`` built from the student's config under ``ds``'s ZeRO stage.

    Each student tensor is copied from the teacher tensor ``family.student_source_name`` names,
    gathering one pair at a time under ZeRO-3; the result equals ``make_student``'s
    (tests/test_models.py) without a second whole model on any rank.
    """
    from nash_ds.compat import lm_head_is_tied, untie_lm_head
    from nash_ds.models.base import check_unmasked

    check_unmasked(teacher)
    with dist.zero3_init_context(ds):
        student = type(teacher)._from_config(family.student_config(teacher.config, len(kept)))
    if not lm_head_is_tied(teacher) and lm_head_is_tied(student):
        # T5 v1.1 / Flan-T5: keep the teacher's own head (deepspeed.initialize partitions it)
        untie_lm_head(student, torch.empty(dist.full_shape(family.lm_head(teacher).weight)))
    sources = dict(teacher.named_parameters(remove_duplicate=False))
    for name, p in student.named_parameters():
        src = sources[family.student_source_name(name, kept)]
        with dist.gathered([src]), dist.gathered([p], modifier_rank=0), torch.no_grad():
            p.data.copy_(src.data)
    buffers = dict(teacher.named_buffers())
    for name, b in student.named_buffers():
        b.copy_(buffers[family.student_source_name(name, kept)])
    student.generation_config = copy.deepcopy(teacher.generation_config)
    return student


def _check_student_family(cfg: RunConfig, family) -> None:
    """model.name_or_path, when it names another model than the teacher, must be the same family."""
    from nash_ds.models import PRESETS, family_for, supported_model_types

    name = cfg.model.name_or_path
    if name == cfg.prune.teacher:
        return
    if name.startswith("preset:"):
        preset = PRESETS.get(name[len("preset:"):])
        model_type = preset["model_type"] if preset else None
    else:
        from transformers import AutoConfig

        try:
            model_type = AutoConfig.from_pretrained(name).model_type
        except (OSError, ValueError):
            return  # not resolvable here: the student is built from the teacher anyway
    if model_type in supported_model_types() and family_for(model_type) is not family:
        raise UserError(f"prune.teacher {cfg.prune.teacher} is a {family.name} model but model.name_or_path "
                        f"{name} is {model_type}; teacher and student must be the same family (the student is "
                        "the teacher with its decoder cut)")


def latency_target(cfg: RunConfig, config, *, num_decoder_layers: int):
    """The ``LatencyTarget`` of a run with ``prune.target_speedup`` or ``prune.latency_profile`` (None without):
    the profile (read, or measured on rank 0 with the evaluate settings and cached in <output_dir>/profile/) and
    the decoder depth k (the given one, checked, or the largest that can reach the target)."""
    from nash_ds.latency_model import LatencyModel, LatencyTarget, load_profile, profile

    p = cfg.prune
    if p.target_speedup is None and p.latency_profile is None:
        return None
    if p.latency_profile is not None:
        model = load_profile(p.latency_profile, config=config)
    else:
        cache = Path(cfg.output_dir) / "profile" / "latency.json"
        model = LatencyModel.from_dict(dist.on_rank_zero(
            lambda: profile(config, cfg.evaluate, seed=cfg.seed, cache=cache).to_dict()))
    given = len(p.decoder_layers) if isinstance(p.decoder_layers, list) else p.decoder_layers
    if model.num_decoder_layers != num_decoder_layers:
        raise UserError(f"prune.latency_profile has {model.num_decoder_layers} decoder layers but the teacher "
                        f"{num_decoder_layers}; profile the teacher's shape ('run.py profile')")
    if p.target_speedup is None:
        return LatencyTarget(model=model, k=given or DEFAULT_DECODER_LAYERS, target_speedup=None)
    k = model.choose_k(p.target_speedup, max_encoder_sparsity=p.max_encoder_sparsity, k=given)
    target = LatencyTarget(model=model, k=k, target_speedup=p.target_speedup)
    log.info("prune: target speedup %.2fx: k=%d decoder layers%s; the decoder cut alone gives %.2fx (%s)",
             p.target_speedup, k, "" if given else " (the largest that reaches it)",
             target.cut_speedup, model.describe())
    return target


def distills(cfg: RunConfig) -> bool:
    """Whether the prune stage distils from the teacher: nash and cofi always (the method), sft only with
    ``prune.sft_distill`` (DistilBART's shrink-and-fine-tune is cross-entropy only); and only with a
    non-zero KD or hidden-state weight."""
    d = cfg.distill
    asked = cfg.prune.method != "sft" or cfg.prune.sft_distill
    return asked and (d.kd_weight > 0 or d.hidden_weight > 0)


def method_label(cfg: RunConfig) -> str:
    """The name results are shown under: nash, cofi, sft, or sft+kd (sft distilling from the teacher)."""
    return "sft+kd" if cfg.prune.method == "sft" and distills(cfg) else cfg.prune.method


def run(cfg: RunConfig, *, stage_dir: Path) -> dict:
    from nash_ds.data import Seq2SeqCollator
    from nash_ds.models import count_params, family_for, kept_decoder_layers, load_config, load_model, preset_config
    from nash_ds.trainer import Trainer

    teacher_src = cfg.prune.teacher
    asks_latency = cfg.prune.target_speedup is not None or cfg.prune.latency_profile is not None
    found: dict = {}

    def check_teacher() -> None:  # before the tokenizer (it comes from the teacher) and before any weight is read
        config = (preset_config(teacher_src[len("preset:"):]) if teacher_src.startswith("preset:")
                  else load_config(teacher_src))
        family = family_for(config)
        family.check_prunable(config)
        _check_student_family(cfg, family)
        num_layers = family.num_layers(config, "decoder")
        # without a latency target the kept layers are known now; with one, k comes from the latency model below
        found.update(family=family, num_decoder_layers=num_layers,
                     kept=None if asks_latency else kept_decoder_layers(cfg.prune, num_layers))

    inputs = common.set_up_training(cfg, stage_dir, method=cfg.prune.method, models={"prune.teacher": teacher_src},
                                    tokenizer_source=cfg.model.tokenizer or teacher_src, check_models=check_teacher)
    ds, tokenizer, data = inputs.ds, inputs.tokenizer, inputs.data
    family, num_decoder_layers, kept = found["family"], found["num_decoder_layers"], found["kept"]
    with common.partitioned_build(ds, teacher_src):  # ZeRO-3: no rank holds the whole teacher or student
        teacher = load_model(teacher_src)
    latency = latency_target(cfg, teacher.config, num_decoder_layers=num_decoder_layers)
    if kept is None:
        kept = kept_decoder_layers(cfg.prune, num_decoder_layers, k=latency.k)
    student = build_student(cfg, teacher, family, ds, kept)
    log.info("prune: student keeps teacher decoder layers %s, %s", kept,
             "built partitioned (ZeRO-3)" if dist.is_partitioned(student) else "copied from the teacher")
    if cfg.train.gradient_checkpointing:  # the student's blocks; the teacher runs without grad anyway
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        log.info("prune: gradient checkpointing on the student")
    torch.manual_seed(cfg.seed)
    masking = Masking.build(family, student.config, method=cfg.prune.method, droprate_init=cfg.prune.droprate_init,
                            teacher_config=teacher.config, deterministic=cfg.prune.deterministic,
                            uniform=cfg.prune.uniform_widths)
    masking.attach(student)
    module = PruneModule(student, family=family, masking=masking, cfg=cfg, kept_decoder_layers=kept, latency=latency)
    distill = distills(cfg)
    meta = {"method": cfg.prune.method, "label": method_label(cfg), "distill": distill, "family": family.name,
            "teacher": teacher_src, "kept_decoder_layers": kept, "target_sparsity": cfg.prune.target_sparsity,
            "deterministic": cfg.prune.deterministic, "uniform_widths": cfg.prune.uniform_widths,
            "student_config": student.config.to_dict(),
            "teacher_config": teacher.config.to_dict(), "teacher_params": count_params(teacher, family),
            "latency": None if latency is None else latency.to_dict()}
    # the teacher runs as a frozen engine only to distil from; a CE-only student lets go of it here
    teacher = dist.inference_engine(teacher, ds=ds) if distill else None
    common.open_stage_dir(cfg, stage_dir)
    if dist.is_rank_zero():
        ckpt.write_meta(stage_dir / "checkpoints", meta)
    task = PruneTask(module, masking=masking, cfg=cfg, tokenizer=tokenizer, teacher=teacher, teacher_family=family,
                     meta=meta)
    trainer = Trainer(cfg=cfg, stage_dir=stage_dir, task=task, tokenizer=tokenizer, train_set=data["train"],
                      eval_set=data[cfg.data.eval_split], collator=Seq2SeqCollator(tokenizer), ds_config=ds,
                      log_prefix="prune")
    result = trainer.fit()
    return {"stage": "prune", "method": cfg.prune.method, "kept_decoder_layers": kept,
            "model": str(stage_dir / "model"), **result}
