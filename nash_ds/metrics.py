"""Generation metrics, computed offline with the libraries that hub metric wrappers call.

Every value is on a 0-100 scale, as papers report them: ROUGE-1/2/L/Lsum are mean F1 over
examples (``rouge-score`` with the Porter stemmer; no bootstrap, so results are deterministic),
BLEU is sacrebleu's corpus BLEU, and exact match / accuracy is the percentage of predictions
equal to their reference after stripping, lower-casing and collapsing whitespace. For
text-to-text classification (GLUE) accuracy *is* exact match on the label words.

Error rates, as grapheme-to-phoneme papers (and Phonetisaurus) score them, lower is better: ``wer`` is the
percentage of examples whose prediction matches none of their references (each example is one word, so it is
100 - exact match), and ``per`` the token edit distance (``rapidfuzz``'s Levenshtein over whitespace-split
tokens) to the closest reference, summed over the split, over the summed lengths of those references.

Several references: a reference may be a list of texts (a list-valued target column, see ``nash_ds.data``).
Then the closest one counts: the best ROUGE F1 (``rouge-score``'s ``score_multi``), sacrebleu's multi-reference
BLEU, a match with any for exact match / ``wer``, and for ``per`` the one at the least edit distance (on ties,
the first listed).
"""

from __future__ import annotations

import re

from nash_ds.errors import UserError

ROUGE_NAMES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
METRIC_NAMES = (*ROUGE_NAMES, "bleu", "exact_match", "accuracy", "wer", "per")
DEFAULT_METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "exact_match", "wer", "per")
LOWER_IS_BETTER = frozenset({"wer", "per"})
"""Error rates: a smaller value is better (``train.greater_is_better=false`` when one picks the best)."""

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _normalize(text: str) -> str:
    return " ".join(text.strip().lower().split())


def _sentences_per_line(text: str) -> str:
    """ROUGE-Lsum scores summary-level LCS over newline-separated sentences."""
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def _as_lists(references: list) -> list[list[str]]:
    out = []
    for r in references:
        refs = [r] if isinstance(r, str) else [str(x) for x in r]
        if not refs:
            raise ValueError("an example has an empty list of references")
        out.append(refs)
    return out


def closest_edit(prediction: str, references: list[str]) -> tuple[int, int]:
    """(token edit distance, reference length) to the closest of ``references``; ties go to the first listed."""
    from rapidfuzz.distance import Levenshtein

    hyp = prediction.split()
    return min(((Levenshtein.distance(hyp, ref.split()), len(ref.split())) for ref in references),
               key=lambda d: d[0])


def error_rates(predictions: list[str], references: list) -> dict[str, float]:
    """``wer`` and ``per`` (in [0, 100]; see the module docstring) of ``predictions`` against ``references``
    (each a text or a list of texts)."""
    refs = _as_lists(references)
    wrong = sum(all(_normalize(p) != _normalize(r) for r in rs) for p, rs in zip(predictions, refs, strict=True))
    dist = length = 0
    for p, rs in zip(predictions, refs, strict=True):
        d, n = closest_edit(p, rs)
        dist, length = dist + d, length + n
    per = 100.0 * dist / length if length else (0.0 if dist == 0 else 100.0)
    return {"wer": 100.0 * wrong / len(predictions), "per": per}


def quality_kept(value: float, base: float, metric: str) -> float | None:
    """``value`` as a percentage of the baseline's ``base``; for error rates, of its accuracy (100 - rate)."""
    if metric in LOWER_IS_BETTER:
        return 100.0 * (100.0 - value) / (100.0 - base) if base < 100.0 else None
    return 100.0 * value / base if base else None


def compute_metrics(
    predictions: list[str],
    references: list,
    names: tuple[str, ...] | list[str] = DEFAULT_METRICS,
) -> dict[str, float]:
    """Metrics ``names`` (see METRIC_NAMES) of ``predictions`` against ``references`` (each a text, or a list of
    texts of which the closest counts), in [0, 100]."""
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown:
        raise UserError(f"unknown metric(s) {unknown}; valid: {', '.join(METRIC_NAMES)}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    refs = _as_lists(references)
    out: dict[str, float] = {}
    rouge_types = [n for n in ROUGE_NAMES if n in names]
    if rouge_types:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(rouge_types, use_stemmer=True)
        totals = dict.fromkeys(rouge_types, 0.0)
        for pred, rs in zip(predictions, refs, strict=True):
            if "rougeLsum" in rouge_types:
                pred, rs = _sentences_per_line(pred), [_sentences_per_line(r) for r in rs]
            for key, score in scorer.score_multi(rs, pred).items():
                totals[key] += score.fmeasure
        out.update({k: 100.0 * v / len(predictions) for k, v in totals.items()})
    if "bleu" in names:
        import sacrebleu

        width = max(map(len, refs))  # sacrebleu: one stream per reference position, None where an example has fewer
        streams = [[rs[j] if j < len(rs) else None for rs in refs] for j in range(width)]
        out["bleu"] = float(sacrebleu.corpus_bleu(predictions, streams).score)
    if "exact_match" in names or "accuracy" in names:
        hits = sum(any(_normalize(p) == _normalize(r) for r in rs) for p, rs in zip(predictions, refs, strict=True))
        score = 100.0 * hits / len(predictions)
        for name in ("exact_match", "accuracy"):
            if name in names:
                out[name] = score
    if "wer" in names or "per" in names:
        out.update(error_rates(predictions, refs))
    return {n: out[n] for n in names}


def metric_names_for(task: str) -> tuple[str, ...]:
    """The metrics worth reporting for ``task``: the generation metrics, plus accuracy for GLUE."""
    return (*DEFAULT_METRICS, "accuracy") if task.startswith("glue/") else DEFAULT_METRICS


def default_metric_for(task: str) -> str:
    """The metric that picks the best checkpoint: accuracy for GLUE, rougeL for everything else."""
    return "accuracy" if task.startswith("glue/") else "rougeL"


def check_metric_for_best(metric: str, task: str, *, greater_is_better: bool | None = None) -> None:
    """``train.metric_for_best`` must be a metric the evaluation of ``task`` reports (or ``loss``): checked before a
    stage writes anything, not at the first evaluation after hours of training."""
    valid = (*metric_names_for(task), "loss")
    if metric not in valid:
        raise UserError(f"train.metric_for_best={metric!r} is not reported for data.task={task!r}; choose one of "
                         f"{', '.join(valid)} (set train.greater_is_better=false for loss, wer and per)")
    if greater_is_better and metric in LOWER_IS_BETTER:
        raise UserError(f"train.metric_for_best={metric} is an error rate (lower is better) but "
                         "train.greater_is_better=true would keep the worst checkpoint; set train.greater_is_better=false")
