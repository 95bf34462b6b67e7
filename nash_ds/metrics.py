"""Generation metrics, computed offline with the libraries that hub metric wrappers call.

Every value is on a 0-100 scale, as papers report them: ROUGE-1/2/L/Lsum are mean F1 over
examples (``rouge-score`` with the Porter stemmer; no bootstrap, so results are deterministic),
BLEU is sacrebleu's corpus BLEU, and exact match / accuracy is the percentage of predictions
equal to their reference after stripping, lower-casing and collapsing whitespace. For
text-to-text classification (GLUE) accuracy *is* exact match on the label words.
"""

from __future__ import annotations

import re

from nash_ds.errors import UserError

ROUGE_NAMES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
METRIC_NAMES = (*ROUGE_NAMES, "bleu", "exact_match", "accuracy")
DEFAULT_METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "exact_match")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _normalize(text: str) -> str:
    return " ".join(text.strip().lower().split())


def _sentences_per_line(text: str) -> str:
    """ROUGE-Lsum scores summary-level LCS over newline-separated sentences."""
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def compute_metrics(
    predictions: list[str],
    references: list[str],
    names: tuple[str, ...] | list[str] = DEFAULT_METRICS,
) -> dict[str, float]:
    """Metrics ``names`` (see METRIC_NAMES) of ``predictions`` against ``references``, in [0, 100]."""
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown:
        raise UserError(f"unknown metric(s) {unknown}; valid: {', '.join(METRIC_NAMES)}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    out: dict[str, float] = {}
    rouge_types = [n for n in ROUGE_NAMES if n in names]
    if rouge_types:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(rouge_types, use_stemmer=True)
        totals = dict.fromkeys(rouge_types, 0.0)
        for pred, ref in zip(predictions, references, strict=True):
            if "rougeLsum" in rouge_types:
                pred, ref = _sentences_per_line(pred), _sentences_per_line(ref)
            for key, score in scorer.score(ref, pred).items():
                totals[key] += score.fmeasure
        out.update({k: 100.0 * v / len(predictions) for k, v in totals.items()})
    if "bleu" in names:
        import sacrebleu

        out["bleu"] = float(sacrebleu.corpus_bleu(predictions, [references]).score)
    if "exact_match" in names or "accuracy" in names:
        hits = sum(_normalize(p) == _normalize(r) for p, r in zip(predictions, references, strict=True))
        score = 100.0 * hits / len(predictions)
        for name in ("exact_match", "accuracy"):
            if name in names:
                out[name] = score
    return {n: out[n] for n in names}


def metric_names_for(task: str) -> tuple[str, ...]:
    """The metrics worth reporting for ``task``: the generation metrics, plus accuracy for GLUE."""
    return (*DEFAULT_METRICS, "accuracy") if task.startswith("glue/") else DEFAULT_METRICS


def default_metric_for(task: str) -> str:
    """The metric that picks the best checkpoint: accuracy for GLUE, rougeL for everything else."""
    return "accuracy" if task.startswith("glue/") else "rougeL"


def check_metric_for_best(metric: str, task: str) -> None:
    """``train.metric_for_best`` must be a metric the evaluation of ``task`` reports (or ``loss``): checked before a
    stage writes anything, not at the first evaluation after hours of training."""
    valid = (*metric_names_for(task), "loss")
    if metric not in valid:
        raise UserError(f"train.metric_for_best={metric!r} is not reported for data.task={task!r}; choose one of "
                        f"{', '.join(valid)} (set train.greater_is_better=false for loss)")
