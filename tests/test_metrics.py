"""Offline ROUGE / BLEU / exact match on strings whose scores are known by hand."""

import pytest

from nash_ds.metrics import DEFAULT_METRICS, compute_metrics, default_metric_for, metric_names_for


def test_identical_is_100_and_disjoint_is_0():
    refs = ["Anna and Ben will play tennis on Friday.", "Sam cannot come because of work."]
    same = compute_metrics(refs, refs)
    assert set(same) == set(DEFAULT_METRICS)
    assert all(v == pytest.approx(100.0) for v in same.values())
    other = compute_metrics(["zebra quantum", "violet kettle"], refs)
    assert all(v == pytest.approx(0.0) for v in other.values())


def test_partial_overlap_by_hand():
    # prediction 3 words, reference 6; all 3 in order: P = 1, R = 1/2 -> F1 = 2/3
    # bigrams: 2 of 2 predicted, 2 of 5 reference -> F1 = 2 * 1 * 0.4 / 1.4 = 4/7
    names = ("rouge1", "rouge2", "rougeL", "exact_match")
    got = compute_metrics(["the cat sat"], ["the cat sat on the mat"], names=names)
    assert got["rouge1"] == pytest.approx(200 / 3)
    assert got["rouge2"] == pytest.approx(400 / 7)
    assert got["rougeL"] == pytest.approx(200 / 3)
    assert got["exact_match"] == 0.0


def test_rouge_lsum_splits_sentences():
    # swapped sentences: the LCS over the whole text keeps 2 of 4 words, the per-sentence union all 4
    got = compute_metrics(["a b. c d."], ["c d. a b."], names=("rougeL", "rougeLsum"))
    assert got["rougeL"] == pytest.approx(50.0)
    assert got["rougeLsum"] == pytest.approx(100.0)


def test_exact_match_and_accuracy_normalise_case_and_space():
    got = compute_metrics([" Positive ", "negative", "entailment"], ["positive", "positive", "entailment"],
                          names=("exact_match", "accuracy"))
    assert got["exact_match"] == got["accuracy"] == pytest.approx(200 / 3)


def test_bleu_partial_is_between():
    score = compute_metrics(["the cat sat on the red mat"], ["the cat sat on the mat"], names=("bleu",))["bleu"]
    assert 0.0 < score < 100.0


def test_errors_and_task_defaults():
    with pytest.raises(ValueError, match="unknown metric.*rougeL"):
        compute_metrics(["a"], ["a"], names=("meteor",))
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        compute_metrics(["a", "b"], ["a"])
    assert default_metric_for("glue/sst2") == "accuracy" and "accuracy" in metric_names_for("glue/rte")
    assert default_metric_for("demo") == "rougeL" and default_metric_for("samsum") == "rougeL"
