"""``finalize``: consolidate the prune checkpoint, prune for real, check, export (rank 0).

1. consolidate the DeepSpeed checkpoint (any ZeRO stage, any world size) to fp32 weights;
2. rebuild the student and its masks, compute deterministic masks and the pruning plan;
3. physically remove what the plan drops;
4. self-check: the masked and the pruned model give the same logits on real batches, else
   exit non-zero and publish nothing;
5. publish ``<output_dir>/finalize/{model/, pruning_report.json}`` atomically.
Other ranks wait.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from nash_ds import checkpoint as ckpt
from nash_ds import dist
from nash_ds.config import RunConfig
from nash_ds.stages import common
from nash_ds.stages.prune import META_FILE


class SelfCheckError(RuntimeError):
    """The pruned model does not compute what the masked model computed."""


def _config_from_dict(d: dict):
    from transformers import AutoConfig

    d = dict(d)
    return AutoConfig.for_model(d.pop("model_type"), **d)


def _model_from_config(config):
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_config(config)


def load_prune_checkpoint(path: Path, *, method: str) -> tuple[dict, dict, str, dict]:
    """(state_dict, meta, tag, info) of the chosen checkpoint, with clear errors for bad input."""
    ckpt_dir, tag = ckpt.resolve_checkpoint(path)
    meta_path = ckpt_dir / META_FILE
    if not meta_path.is_file():
        raise ValueError(f"{ckpt_dir} is not a prune-stage checkpoint directory (no {META_FILE}); finalize "
                         "reads the checkpoints of 'run.py prune'")
    meta = json.loads(meta_path.read_text())
    info = ckpt.read_info(ckpt_dir, tag)
    if info.get("method") != method or meta.get("method") != method:
        raise ValueError(f"checkpoint {ckpt_dir / tag} was trained with method {info.get('method')!r} but "
                         f"prune.method is {method!r}; set prune.method={info.get('method')} or point "
                         "finalize.checkpoint at a checkpoint of this method")
    best = (info.get("best") or {}).get("tag")
    if best and (ckpt_dir / best / ckpt.COMPLETE).is_file():
        tag = best
    state = ckpt.consolidate(ckpt_dir, tag)
    return state, meta, tag, info


def _sub_state(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _max_logit_diff(a, b, batches) -> float:
    worst = 0.0
    with torch.no_grad():
        for batch in batches:
            la = a(**batch).logits
            lb = b(**batch).logits
            worst = max(worst, float((la - lb).abs().max()))
    return worst


def pruned_from_masks(student, *, family, masks, kept: list[int]):
    """(physically pruned copy, plan) for deterministic ``masks`` (None: keep all, the sft case).

    With masks, ``student`` leaves with the masks attached in deterministic mode: it is then the
    masked model the pruned one must match.
    """
    from nash_ds.masks import attach
    from nash_ds.models.pruning import prune_model
    from nash_ds.plan import PruningPlan

    if masks is None:
        c = student.config
        plan = PruningPlan.full(
            num_encoder_layers=family.num_layers(c, "encoder"), num_decoder_layers=family.num_layers(c, "decoder"),
            num_heads=family.num_heads(c, "encoder"), encoder_ffn=family.d_ff(c, "encoder"),
            decoder_ffn=family.d_ff(c, "decoder"))
        plan.kept_decoder_layers = list(kept)
    else:
        masks.eval()
        plan = masks.plan(kept)
    pruned = prune_model(copy.deepcopy(student), plan).eval()
    student.eval()
    if masks is not None:
        attach(student, family, masks)
        masks()  # deterministic gates for the hooks
    return pruned, plan


def self_check(masked, pruned, batches, *, atol: float) -> float:
    """Largest |logit difference| over ``batches``; raises SelfCheckError above ``atol``."""
    diff = _max_logit_diff(masked, pruned, batches)
    if not diff <= atol:
        raise SelfCheckError(f"self-check failed: the pruned model's logits differ from the masked model's by "
                             f"{diff:.3g} > finalize.atol={atol}; nothing was published")
    return diff


def finalize(cfg: RunConfig, *, stage_dir: Path) -> dict:
    """Rank-0 body of the stage; returns the report."""
    from nash_ds.data import Seq2SeqCollator, build_datasets
    from nash_ds.export import atomic_dir, save_hf_dir
    from nash_ds.masks import MaskSet
    from nash_ds.models import get_family, load_full_state

    method = cfg.prune.method
    source = Path(cfg.finalize.checkpoint or Path(cfg.output_dir) / "prune" / "checkpoints")
    state, meta, tag, info = load_prune_checkpoint(source, method=method)
    student_config = _config_from_dict(meta["student_config"])
    teacher_config = _config_from_dict(meta["teacher_config"])
    family = get_family(student_config)
    with torch.device("meta"):
        student = _model_from_config(student_config)
    load_full_state(student, _sub_state(state, "student."), what=f"checkpoint {source}")
    student.eval()
    kept = list(meta["kept_decoder_layers"])
    masks = None
    if method in ("nash", "cofi"):
        masks = MaskSet(family, student_config, method=method, droprate_init=cfg.prune.droprate_init,
                        teacher_config=teacher_config)
        masks.load_state_dict(_sub_state(state, "masks."))
    pruned, plan = pruned_from_masks(student, family=family, masks=masks, kept=kept)

    # self-check on real batches of the task
    tokenizer = common.load_tokenizer(cfg.model.tokenizer or meta["teacher"])
    data = build_datasets(cfg.data, tokenizer, splits=(cfg.data.eval_split,), seed=cfg.seed)[cfg.data.eval_split]
    collate = Seq2SeqCollator(tokenizer)
    bs = cfg.generation.eval_batch_size
    batches = [collate([data[i] for i in range(s, min(len(data), s + bs))])
               for s in range(0, min(len(data), bs * cfg.finalize.check_batches), bs)]
    diff = self_check(student, pruned, batches, atol=cfg.finalize.atol)

    report = build_report(family=family, plan=plan, pruned=pruned, teacher_config=teacher_config, masks=masks,
                          meta=meta, tag=tag, diff=diff, atol=cfg.finalize.atol)
    with atomic_dir(stage_dir, overwrite=cfg.overwrite) as tmp:
        save_hf_dir(pruned, tokenizer, tmp / "model", dtype=getattr(torch, cfg.model.export_dtype))
        (tmp / "pruning_report.json").write_text(json.dumps(report, indent=1))
    return report


def _count(model, family) -> dict:
    total = sum(p.numel() for p in model.parameters())
    prunable = family.count_prunable_params(model)
    return {"total": int(total), **{f"prunable_{k}": int(v) for k, v in prunable.items()}}


def build_report(*, family, plan, pruned, teacher_config, masks, meta, tag, diff, atol) -> dict:
    """Kept units per layer, provenance of decoder layers, parameter counts and sparsity vs the teacher."""
    with torch.device("meta"):
        teacher = _model_from_config(teacher_config)
    dense = _count(teacher, family)
    ours = _count(pruned, family)
    sparsity = {}
    for part in ("encoder", "decoder", "model"):
        key = f"prunable_{part}"
        if key in dense and dense[key]:
            sparsity[part] = 1.0 - ours[key] / dense[key]
    sparsity["total_params"] = 1.0 - ours["total"] / dense["total"]
    report = {
        "method": meta["method"],
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
        "params": {"teacher": dense, "pruned": ours},
        "sparsity_vs_teacher": sparsity,
        "self_check": {"max_abs_logit_diff": diff, "atol": atol},
        "export_class": type(pruned).__name__,
    }
    if masks is not None:
        report["mask_expected_prunable_params"] = {k: int(round(float(v)))
                                                   for k, v in masks.deterministic_params().items()}
    return report


def run(cfg: RunConfig, *, stage_dir: Path) -> dict:
    if (stage_dir / "model").exists() and not cfg.overwrite:
        raise ValueError(f"{stage_dir} already holds a finished run ({stage_dir / 'model'} exists); pass "
                         "overwrite=true to replace it")
    error, report = None, None
    if dist.is_rank_zero():
        try:
            report = finalize(cfg, stage_dir=stage_dir)
        except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error = e
    dist.raise_if_any_rank(error)
    report = dist.broadcast_object(report)
    if dist.is_rank_zero():
        s = report["sparsity_vs_teacher"]
        print(f"[nash-ds] finalize: {report['export_class']} -> {stage_dir / 'model'}; sparsity vs teacher "
              + ", ".join(f"{k} {v:.3f}" for k, v in s.items())
              + f"; self-check max |dlogit| {report['self_check']['max_abs_logit_diff']:.2e}", flush=True)
    return {"stage": "finalize", "model": str(stage_dir / "model"), "report": report}
