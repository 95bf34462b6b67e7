"""``finalize``: consolidate the prune checkpoint, prune for real, check, export (rank 0).

1. consolidate the DeepSpeed checkpoint (any ZeRO stage, any world size) to fp32 weights;
2. rebuild the student and its masks, compute deterministic masks and the pruning plan;
3. physically remove what the plan drops;
4. self-check: the masked and the pruned model give the same logits on real batches, else
   exit non-zero and publish nothing;
5. publish ``<output_dir>/finalize/{model/, pruning_report.json}`` atomically.
Other ranks wait.

Memory (rank 0 holds the whole model): the checkpoint is read tensor by tensor and only the
student and its masks (optimizer state, Lagrangian and distillation projections stay on disk);
the student is built from those tensors without a copy; the masked model's self-check logits
are computed first and parked on disk; the student is then cut tensor by tensor into the pruned
model (each full tensor freed once sliced). The peak is about one fp32 student plus one tensor
(bench/finalize_memory.py, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import gc
import json
import tempfile
from pathlib import Path

import torch

from nash_ds import checkpoint as ckpt
from nash_ds import dist
from nash_ds.config import RunConfig
from nash_ds.stages import common
from nash_ds.stages.prune import META_FILE

FINALIZE_PREFIXES = ("student.", "masks.")
"""What the finalizer reads of a prune checkpoint (PruneModule also holds lagrangian.*, enc_proj.*,
dec_proj.*, which it does not need)."""


class SelfCheckError(RuntimeError):
    """The pruned model does not compute what the masked model computed."""


def _config_from_dict(d: dict):
    from transformers import AutoConfig

    d = dict(d)
    return AutoConfig.for_model(d.pop("model_type"), **d)


def _model_from_config(config):
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_config(config)


def load_prune_checkpoint(path: Path, *, method: str, prefixes: tuple[str, ...] | None = None
                          ) -> tuple[dict, dict, str, dict]:
    """(state_dict, meta, tag, info) of the chosen checkpoint, with clear errors for bad input.

    ``prefixes``: read only the tensors whose names start with one of them (default: all).
    """
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
    keep = None if prefixes is None else (lambda name: name.startswith(prefixes))
    state = ckpt.consolidate(ckpt_dir, tag, keep=keep)
    return state, meta, tag, info


def _pop_prefix(state: dict, prefix: str) -> dict:
    """Move the entries under ``prefix`` out of ``state`` (no copies), prefix stripped."""
    return {k[len(prefix):]: state.pop(k) for k in [k for k in state if k.startswith(prefix)]}


def _max_logit_diff(a, b, batches) -> float:
    worst = 0.0
    with torch.no_grad():
        for batch in batches:
            la = a(**batch).logits
            lb = b(**batch).logits
            worst = max(worst, float((la - lb).abs().max()))
    return worst


def masked_plan(student, *, family, masks, kept: list[int]):
    """The pruning plan of the deterministic ``masks`` (None: keep all, the sft case)."""
    from nash_ds.plan import PruningPlan

    if masks is None:
        c = student.config
        plan = PruningPlan.full(
            num_encoder_layers=family.num_layers(c, "encoder"), num_decoder_layers=family.num_layers(c, "decoder"),
            num_heads=family.num_heads(c, "encoder"), encoder_ffn=family.d_ff(c, "encoder"),
            decoder_ffn=family.d_ff(c, "decoder"))
        plan.kept_decoder_layers = list(kept)
        return plan
    masks.eval()
    return masks.plan(kept)


def _attach_deterministic(student, *, family, masks) -> None:
    """Make ``student`` the masked model: hooks on, gates at their deterministic values."""
    from nash_ds.masks import attach

    student.eval()
    if masks is not None:
        attach(student, family, masks)
        masks.eval()
        masks()  # deterministic gates for the hooks


def pruned_from_masks(student, *, family, masks, kept: list[int]):
    """(physically pruned copy, plan) for deterministic ``masks`` (None: keep all, the sft case).

    With masks, ``student`` leaves with the masks attached in deterministic mode: it is then the
    masked model the pruned one must match.
    """
    from nash_ds.models.pruning import prune_model

    plan = masked_plan(student, family=family, masks=masks, kept=kept)
    pruned = prune_model(student, plan).eval()  # leaves ``student`` untouched
    _attach_deterministic(student, family=family, masks=masks)
    return pruned, plan


def _checked(diff: float, atol: float) -> float:
    if not diff <= atol:
        raise SelfCheckError(f"self-check failed: the pruned model's logits differ from the masked model's by "
                             f"{diff:.3g} > finalize.atol={atol}; nothing was published")
    return diff


def self_check(masked, pruned, batches, *, atol: float) -> float:
    """Largest |logit difference| over ``batches``; raises SelfCheckError above ``atol``."""
    return _checked(_max_logit_diff(masked, pruned, batches), atol)


def park_logits(model, batches, directory: Path) -> list[Path]:
    """Run ``model`` on ``batches`` and write each batch's logits to ``directory`` (large-vocab logits
    of a few batches can weigh as much as a model; on disk they cost no memory meanwhile)."""
    paths = []
    with torch.no_grad():
        for i, batch in enumerate(batches):
            paths.append(directory / f"logits-{i}.pt")
            torch.save(model(**batch).logits, paths[-1])
    return paths


def self_check_parked(parked: list[Path], pruned, batches, *, atol: float) -> float:
    """``self_check`` against logits written by ``park_logits`` (one batch in memory at a time)."""
    worst = 0.0
    with torch.no_grad():
        for path, batch in zip(parked, batches, strict=True):
            ref = torch.load(path, weights_only=True)
            worst = max(worst, float((ref - pruned(**batch).logits).abs().max()))
            del ref
    return _checked(worst, atol)


def finalize(cfg: RunConfig, *, stage_dir: Path) -> dict:
    """Rank-0 body of the stage; returns the report."""
    from nash_ds.data import Seq2SeqCollator, build_datasets
    from nash_ds.export import atomic_dir, cast_for_export, save_hf_dir
    from nash_ds.masks import MaskSet
    from nash_ds.models import get_family, load_full_state
    from nash_ds.models.pruning import prune_model

    method = cfg.prune.method
    source = Path(cfg.finalize.checkpoint or Path(cfg.output_dir) / "prune" / "checkpoints")
    state, meta, tag, info = load_prune_checkpoint(source, method=method, prefixes=FINALIZE_PREFIXES)
    student_state = _pop_prefix(state, "student.")
    mask_state = _pop_prefix(state, "masks.")
    student_config = _config_from_dict(meta["student_config"])
    teacher_config = _config_from_dict(meta["teacher_config"])
    family = get_family(student_config)
    with torch.device("meta"):
        student = _model_from_config(student_config)
    load_full_state(student, student_state, what=f"checkpoint {source}")  # no copy: the student owns them
    del state, student_state
    kept = list(meta["kept_decoder_layers"])
    masks = None
    if method in ("nash", "cofi"):
        masks = MaskSet(family, student_config, method=method, droprate_init=cfg.prune.droprate_init,
                        teacher_config=teacher_config)
        masks.load_state_dict(mask_state)
    plan = masked_plan(student, family=family, masks=masks, kept=kept)
    _attach_deterministic(student, family=family, masks=masks)

    # self-check on real batches of the task: the masked model first, then the pruned one
    tokenizer = common.load_tokenizer(cfg.model.tokenizer or meta["teacher"])
    data = build_datasets(cfg.data, tokenizer, splits=(cfg.data.eval_split,), seed=cfg.seed)[cfg.data.eval_split]
    collate = Seq2SeqCollator(tokenizer)
    bs = cfg.generation.eval_batch_size
    batches = [collate([data[i] for i in range(s, min(len(data), s + bs))])
               for s in range(0, min(len(data), bs * cfg.finalize.check_batches), bs)]
    with tempfile.TemporaryDirectory(prefix="nash-finalize-") as parked:
        reference = park_logits(student, batches, Path(parked))
        pruned = prune_model(student, plan, consume=True).eval()  # cuts the student tensor by tensor
        del student
        gc.collect()
        diff = self_check_parked(reference, pruned, batches, atol=cfg.finalize.atol)

    report = build_report(family=family, plan=plan, pruned=pruned, teacher_config=teacher_config, masks=masks,
                          meta=meta, tag=tag, diff=diff, atol=cfg.finalize.atol)
    export_dtype = getattr(torch, cfg.model.export_dtype)
    cast_for_export(pruned, export_dtype)  # in place, as save_hf_dir would cast a copy: no second model
    with atomic_dir(stage_dir, overwrite=cfg.overwrite) as tmp:
        save_hf_dir(pruned, tokenizer, tmp / "model", dtype=export_dtype)
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
