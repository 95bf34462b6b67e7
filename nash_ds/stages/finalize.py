"""``finalize``: consolidate the prune checkpoint, prune for real, check, export (rank 0).

1. consolidate the DeepSpeed checkpoint (any ZeRO stage, any world size) to fp32 weights;
2. rebuild the student and its masks (``masks.Masking``): deterministic masks, the pruning plan,
   and the student as the masked model;
3. physically remove what the plan drops;
4. self-check: the masked and the pruned model give the same logits on real batches, else
   exit non-zero and publish nothing;
5. write the export in ``model.export_dtype``, reload it from disk and compare its logits with the masked
   model's again (``check_export``), then publish ``<output_dir>/finalize/{model/, pruning_report.json,
   masks_*.png}`` in one rename.
Other ranks wait.

Memory (rank 0 holds the whole model): the checkpoint is read tensor by tensor and only the
student and its masks (optimizer state, Lagrangian and distillation projections stay on disk);
the student is built from those tensors without a copy; the masked model's self-check logits
are computed first and parked on disk; the student is then cut tensor by tensor into the pruned
model (each full tensor freed once sliced), which is freed again before the export is reloaded for its check.
The peak is about one fp32 student plus one tensor
(bench/finalize_memory.py, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import gc
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nash_ds import checkpoint as ckpt
from nash_ds import dist, stop
from nash_ds.config import PruneConfig, RunConfig
from nash_ds.errors import SelfCheckError, UserError
from nash_ds.masks import Masking
from nash_ds.stages import common

if TYPE_CHECKING:
    from nash_ds.models.base import Family
    from nash_ds.plan import PruningPlan

log = logging.getLogger(__name__)


def _config_from_dict(d: dict):
    from transformers import AutoConfig

    d = dict(d)
    return AutoConfig.for_model(d.pop("model_type"), **d)


def load_prune_checkpoint(path: Path, *, method: str, keep=None) -> tuple[dict, dict, str, dict]:
    """(state_dict, meta, tag, info) of the chosen checkpoint, with clear errors for bad input.

    ``keep``: read only the tensors whose names it accepts (default: all).
    """
    ckpt_dir, tag = ckpt.resolve_checkpoint(path)
    meta = ckpt.read_meta(ckpt_dir)
    if (Path(path) / ckpt.COMPLETE).is_file():  # a tag the user chose: that one or an error
        info = ckpt.read_info(ckpt_dir, tag)
    else:  # the newest that can be read (an unreadable newest one is skipped, with a warning)
        tag, info = ckpt.usable_tag(ckpt_dir)
    if info.get("method") != method or meta.get("method") != method:
        raise UserError(f"checkpoint {ckpt_dir / tag} was trained with method {info.get('method')!r} but "
                        f"prune.method is {method!r}; set prune.method={info.get('method')} or point "
                        "finalize.checkpoint at a checkpoint of this method")
    best = (info.get("best") or {}).get("tag")
    if best and best != tag and (ckpt_dir / best / ckpt.COMPLETE).is_file():
        try:
            ckpt.verify_loadable(ckpt_dir / best)
            tag = best
        except ckpt.UnreadableCheckpoint as e:
            log.warning("the best checkpoint %s cannot be read (%s); finalizing %s instead", ckpt_dir / best, e, tag)
    state = ckpt.consolidate(ckpt_dir, tag, keep=keep)
    return state, meta, tag, info


def logit_tolerance(scale: float, *, atol: float, rtol: float) -> float:
    """Allowed |masked - pruned| logit difference in float32 when the masked model's logits reach ``scale``:
    ``atol + rtol * scale``. float32 rounding grows with the logits (trained models: see ``FinalizeConfig.rtol``);
    a wrong unit, layer or tensor moves them by about the logits themselves."""
    return atol + rtol * scale


def pruned_from_masks(student, *, masking: Masking, kept: list[int]):
    """(physically pruned copy, plan) of ``student`` for the deterministic masks of ``masking``.

    ``student`` leaves as the masked model (``Masking.finalize``) the pruned one must match.
    """
    from nash_ds.models.pruning import prune_model

    plan = masking.finalize(student, kept)
    return prune_model(student, plan).eval(), plan  # prune_model leaves ``student`` untouched


def _checked(diff: float, scale: float, *, atol: float, rtol: float) -> dict:
    tolerance = logit_tolerance(scale, atol=atol, rtol=rtol)
    if not diff <= tolerance:
        raise SelfCheckError(f"self-check failed: the pruned model's logits differ from the masked model's by "
                             f"{diff:.3g} > {tolerance:.3g} (finalize.atol={atol} + finalize.rtol={rtol} x max "
                             f"|logit| {scale:.3g}); nothing was published")
    return {"max_abs_logit_diff": diff, "max_abs_logit": scale, "tolerance": tolerance}


def _largest_gap(references, model, batches) -> tuple[float, float]:
    """(largest |reference - model logit|, largest |reference logit|) over ``batches``; ``references`` yields each
    batch's reference logits in turn (computed or read from disk), so one batch is in memory at a time."""
    worst, scale = 0.0, 0.0
    with torch.no_grad():
        for ref, batch in zip(references, batches, strict=True):
            worst = max(worst, float((ref - model(**batch).logits.to(ref.dtype)).abs().max()))
            scale = max(scale, float(ref.abs().max()))
            del ref
    return worst, scale


def _parked(paths: list[Path]):
    return (torch.load(path, weights_only=True) for path in paths)


def self_check(masked, pruned, batches, *, atol: float, rtol: float = 0.0) -> dict:
    """Largest |logit difference| over ``batches`` (``max_abs_logit_diff``), the masked model's largest |logit|
    (``max_abs_logit``) and the ``tolerance``; raises SelfCheckError above ``logit_tolerance``."""
    references = (masked(**batch).logits for batch in batches)  # run inside _largest_gap's no_grad
    return _checked(*_largest_gap(references, pruned, batches), atol=atol, rtol=rtol)


def park_logits(model, batches, directory: Path) -> list[Path]:
    """Run ``model`` on ``batches`` and write each batch's logits to ``directory`` (large-vocab logits
    of a few batches can weigh as much as a model; on disk they cost no memory meanwhile)."""
    paths = []
    with torch.no_grad():
        for i, batch in enumerate(batches):
            paths.append(directory / f"logits-{i}.pt")
            torch.save(model(**batch).logits, paths[-1])
    return paths


def self_check_parked(parked: list[Path], pruned, batches, *, atol: float, rtol: float = 0.0) -> dict:
    """``self_check`` against logits written by ``park_logits`` (one batch in memory at a time)."""
    return _checked(*_largest_gap(_parked(parked), pruned, batches), atol=atol, rtol=rtol)


@dataclass
class MaskedStudent:
    """A prune checkpoint rebuilt as the masked model: the student with its deterministic masks folded in."""

    student: nn.Module  # the masked model the pruned one must match
    masking: Masking
    plan: PruningPlan
    family: Family
    config: Any  # the student's config
    meta: dict  # prune_meta.json
    tag: str  # the checkpoint that was read


def masked_student(source: Path, *, method: str, droprate_init: float = PruneConfig.droprate_init,
                   dtype: torch.dtype | None = None) -> MaskedStudent:
    """Consolidate the prune checkpoint at ``source`` (``load_prune_checkpoint``: the best readable tag), build the
    student on the meta device and fill it with the checkpoint's tensors without a copy (cast to ``dtype`` if given,
    before the masks are folded in), rebuild its masks and fold them in (``Masking.finalize``)."""
    from nash_ds.models import family_for, load_full_state

    state, meta, tag, _ = load_prune_checkpoint(source, method=method, keep=Masking.wanted)
    student_state, mask_state = Masking.split_state(state)
    del state
    config = _config_from_dict(meta["student_config"])
    family = family_for(config)
    with torch.device("meta"):
        student = family.from_config(config)
    load_full_state(student, student_state, what=f"checkpoint {source}")  # no copy: the student owns them
    del student_state
    if dtype is not None:
        student = student.to(dtype)
    masking = Masking.build(family, config, method=method, droprate_init=droprate_init,
                            teacher_config=_config_from_dict(meta["teacher_config"]),
                            deterministic=meta["deterministic"], mask_state=mask_state,
                            uniform=meta.get("uniform_widths", False))  # absent from checkpoints before issue 22
    plan = masking.finalize(student, list(meta["kept_decoder_layers"]))  # the student is now the masked model
    return MaskedStudent(student.eval(), masking, plan, family, config, meta, tag)


def finalize(cfg: RunConfig, *, stage_dir: Path) -> dict:
    """Rank-0 body of the stage; returns the report."""
    from nash_ds.data import Seq2SeqCollator, build_datasets
    from nash_ds.export import atomic_dir, cast_for_export, save_hf_dir
    from nash_ds.models.pruning import prune_model

    source = Path(cfg.finalize.checkpoint or Path(cfg.output_dir) / "prune" / "checkpoints")
    masked = masked_student(source, method=cfg.prune.method, droprate_init=cfg.prune.droprate_init)
    student, masking, plan, family, meta, tag = (masked.student, masked.masking, masked.plan, masked.family,
                                                 masked.meta, masked.tag)
    student_config = masked.config
    del masked  # it holds the student, which prune_model(consume=True) below must be able to free
    stop.at("finalize:read", "finalize (after reading the checkpoint)")

    # self-check on real batches of the task: the masked model first, then the pruned one
    tokenizer = common.load_tokenizer(cfg.model.tokenizer or meta["teacher"])
    data = build_datasets(cfg.data, tokenizer, splits=(cfg.data.eval_split,), seed=cfg.seed)[cfg.data.eval_split]
    collate = Seq2SeqCollator(tokenizer)
    bs = cfg.generation.eval_batch_size
    batches = [collate([data[i] for i in range(s, min(len(data), s + bs))])
               for s in range(0, min(len(data), bs * cfg.finalize.check_batches), bs)]
    export_dtype = getattr(torch, cfg.model.export_dtype)
    with tempfile.TemporaryDirectory(prefix="nash-finalize-") as parked:
        reference = park_logits(student, batches, Path(parked))
        pruned = prune_model(student, plan, consume=True).eval()  # cuts the student tensor by tensor
        del student
        gc.collect()
        check = self_check_parked(reference, pruned, batches, atol=cfg.finalize.atol, rtol=cfg.finalize.rtol)
        stop.at("finalize:check", "finalize (after the self-check)")
        report = build_report(family=family, plan=plan, pruned=pruned, teacher_params=meta["teacher_params"],
                              masking=masking, meta=meta, tag=tag, check=check, atol=cfg.finalize.atol,
                              rtol=cfg.finalize.rtol, student_config=student_config)
        cast_for_export(pruned, export_dtype)  # in place, as save_hf_dir would cast a copy: no second model
        with atomic_dir(stage_dir, overwrite=cfg.overwrite) as tmp:
            save_hf_dir(pruned, tokenizer, tmp / "model", dtype=export_dtype)
            del pruned
            gc.collect()
            # what is published is what was checked: the files, reloaded in their dtype, before the rename
            report["self_check"]["reloaded"] = check_export(tmp / "model", reference, batches, dtype=export_dtype,
                                                            atol=cfg.finalize.atol, rtol=cfg.finalize.rtol)
            (tmp / "pruning_report.json").write_text(json.dumps(report, indent=1))
            figures = masking.figures()
            if figures is not None:  # the masks as pictures beside the report (masks_<name>.png)
                from nash_ds.plot import save_mask_figures

                save_mask_figures(*figures, tmp)
            stop.at("finalize:publish", "finalize (before publishing the export)")  # the temp dir is removed
    return report


EXPORT_TOLERANCE_EPS = 16
"""Reloaded-export check in bfloat16 / float16: allowed |logit difference| = ``logit_tolerance`` + this many of the
dtype's machine epsilons times the largest |logit|. The cast alone moved the logits of the demo T5 by 0.95 eps (bf16) and
0.7 eps (fp16) of the largest logit; deeper models add rounding per layer; a lost or re-initialised tensor moves
them by about the largest logit itself. float32 exports get ``logit_tolerance`` alone."""


def export_tolerance(dtype: torch.dtype, *, atol: float, scale: float, rtol: float = 0.0) -> float:
    """Allowed |logit difference| between an export in ``dtype`` and the fp32 masked model (logits up to ``scale``)."""
    base = logit_tolerance(scale, atol=atol, rtol=rtol)
    if dtype == torch.float32:
        return base
    return base + EXPORT_TOLERANCE_EPS * torch.finfo(dtype).eps * scale


def check_export(model_dir: Path, parked: list[Path], batches, *, dtype: torch.dtype, atol: float,
                 rtol: float = 0.0) -> dict:
    """Reload the written export in ``dtype`` (nash_ds classes, no code from the directory) and compare its logits
    with the masked model's (``park_logits``); SelfCheckError, and nothing published, beyond ``export_tolerance``."""
    from nash_ds.models import load_model

    model = load_model(str(model_dir), dtype=dtype).eval()
    worst, scale = _largest_gap(_parked(parked), model, batches)
    tolerance = export_tolerance(dtype, atol=atol, scale=scale, rtol=rtol)
    name = str(dtype).removeprefix("torch.")
    if not worst <= tolerance:
        raise SelfCheckError(f"self-check failed after writing: the {name} export reloaded from disk differs from the "
                             f"masked model by {worst:.3g} > {tolerance:.3g} (finalize.atol={atol} + finalize.rtol={rtol} x max "
                             f"|logit| {scale:.3g}"
                             + ("" if dtype == torch.float32 else f" + {EXPORT_TOLERANCE_EPS} eps x max |logit| "
                                f"{scale:.3g}") + "); nothing was published"
                             + ("" if dtype == torch.float32 else "; try model.export_dtype=float32"))
    return {"max_abs_logit_diff": worst, "max_abs_logit": scale, "tolerance": tolerance, "dtype": name}


def build_report(*, family, plan, pruned, teacher_params: dict, masking: Masking, meta: dict, tag: str,
                 check: dict, atol: float, rtol: float = 0.0, student_config) -> dict:
    """Kept units per layer, provenance of decoder layers, parameter counts (``count_params``: what the
    teacher and the export really hold) and sparsity vs the teacher."""
    from nash_ds.models import count_params
    from nash_ds.models.base import sparsity as sparsity_of
    from nash_ds.models.pruning import export_shape

    ours = count_params(pruned, family)
    s = sparsity_of(ours, teacher_params)
    report = {
        "method": meta["method"],
        "label": meta["label"],
        "distill": meta["distill"],
        "deterministic": meta["deterministic"],
        "family": meta["family"],
        "teacher": meta["teacher"],
        "checkpoint_tag": tag,
        "kept_decoder_layers": plan.kept_decoder_layers,
        "decoder_layer_sources": {str(i): t for i, t in enumerate(plan.kept_decoder_layers)},
        "plan": plan.to_dict(),
        "heads_kept_per_layer": {
            "encoder": [len(h) for h in plan.encoder_heads],
            "decoder_self": [len(h) for h in plan.decoder_self_heads],
            "decoder_cross": [len(h) for h in plan.decoder_cross_heads]},
        "ffn_kept_per_layer": {"encoder": [len(f) for f in plan.encoder_ffn],
                               "decoder": [len(f) for f in plan.decoder_ffn]},
        "hidden_kept": None if plan.hidden is None else len(plan.hidden),
        "params": {"teacher": dict(teacher_params), "pruned": ours},
        "sparsity_vs_teacher": {"encoder": s["encoder"], "decoder": s["decoder"], "model": s["prunable_model"],
                                "total_params": s["total_params"]},
        "self_check": {**check, "atol": atol, "rtol": rtol},
        "export_class": type(pruned).__name__,
        "export_shape": export_shape(student_config, plan),
    }
    report.update(masking.report())
    if meta["latency"] is not None:  # the run's latency model: what it predicts for this plan
        from nash_ds.latency_model import LatencyModel

        latency = meta["latency"]
        model = LatencyModel.from_dict(latency["profile"])
        predicted = model.plan_ms(plan)
        report.update(predicted_speedup=predicted["predicted_speedup"], target_speedup=latency["target_speedup"],
                      predicted_ms={k: v for k, v in predicted.items() if k.endswith("_ms")} | {
                          "dense_generate_ms": model.dense_ms()},
                      latency_profile=model.describe())
    return report


def run(cfg: RunConfig, *, stage_dir: Path) -> dict:
    common.check_not_finished(cfg, stage_dir)
    common.check_output_dir(cfg, stage_dir)
    if cfg.finalize.checkpoint is None and not (Path(cfg.output_dir) / "prune" / "checkpoints").exists():
        raise UserError(f"{Path(cfg.output_dir) / 'prune' / 'checkpoints'} does not exist: run 'run.py prune' with "
                        "the same output_dir first, or set finalize.checkpoint=<prune checkpoint directory>")
    report = dist.on_rank_zero(lambda: finalize(cfg, stage_dir=stage_dir))
    s = report["sparsity_vs_teacher"]
    log.info("finalize: %s -> %s; sparsity vs teacher %s; self-check max |dlogit| %.2e", report["export_class"],
             stage_dir / "model", ", ".join(f"{k} {v:.3f}" for k, v in s.items()),
             report["self_check"]["max_abs_logit_diff"])
    return {"stage": "finalize", "model": str(stage_dir / "model"), "report": report}
