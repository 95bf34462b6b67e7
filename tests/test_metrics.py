"""Offline ROUGE / BLEU / exact match on strings whose scores are known by hand."""

import pytest

from nash_ds.metrics import (
    DEFAULT_METRICS,
    LOWER_IS_BETTER,
    check_metric_for_best,
    compute_metrics,
    default_metric_for,
    error_rates,
    metric_names_for,
    quality_kept,
)


def test_identical_is_100_and_disjoint_is_0():
    refs = ["Anna and Ben will play tennis on Friday.", "Sam cannot come because of work."]
    same = compute_metrics(refs, refs)
    assert set(same) == set(DEFAULT_METRICS)
    assert all(v == pytest.approx(0.0 if k in LOWER_IS_BETTER else 100.0) for k, v in same.items())
    other = compute_metrics(["zebra quantum", "violet kettle"], refs)
    assert all(v == pytest.approx(100.0 if k in LOWER_IS_BETTER else 0.0) for k, v in other.items())


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


# --------------------------------------------------------------------------- wer / per, several references


def test_wer_per_by_hand():
    # word 1 right; word 2: one substitution in 3 phones; word 3: one deletion in 4 -> PER (0 + 1 + 1) / (2 + 3 + 4)
    got = error_rates(["K AE1 T", "D AO1 G", "B ER1 D"], ["K AE1 T", "D AA1 G", "B ER1 D Z"])
    assert got["wer"] == pytest.approx(200 / 3)
    assert got["per"] == pytest.approx(100 * 2 / 10)


def test_closest_of_several_references_counts():
    refs = [["T AH0 M EY1 T OW2", "T AH0 M AA1 T OW2"]]  # "tomato": either pronunciation is right
    assert error_rates(["T AH0 M AA1 T OW2"], refs) == {"wer": 0.0, "per": 0.0}
    # one substitution from the second, two from the first: the second is the closest, its length the denominator
    got = error_rates(["T AH0 M AA1 T OW1"], refs)
    assert got == {"wer": 100.0, "per": pytest.approx(100 / 6)}
    # exact match and ROUGE take the best reference too; a plain string is one reference
    both = compute_metrics(["a b c", "x"], [["q", "a b c"], "x"], names=("exact_match", "rougeL", "wer"))
    assert both == {"exact_match": 100.0, "rougeL": pytest.approx(100.0), "wer": 0.0}


def test_empty_hypothesis_is_every_phone_deleted():
    got = error_rates(["", "AH0"], [["B AW1 T"], ["AH0"]])
    assert got["wer"] == 50.0 and got["per"] == pytest.approx(100 * 3 / 4)
    assert error_rates([""], [["B", "B AW1 T"]])["per"] == pytest.approx(100.0)  # the closest: "B", 1 of 1


def test_ties_go_to_the_first_reference():
    # "A B" is one edit from both "A" (length 1) and "A B C" (length 3): the first listed decides the denominator
    assert error_rates(["A B"], [["A", "A B C"]])["per"] == pytest.approx(100.0)
    assert error_rates(["A B"], [["A B C", "A"]])["per"] == pytest.approx(100 / 3)


def test_error_rates_lower_is_better():
    assert quality_kept(20.0, 40.0, "wer") == pytest.approx(100 * 80 / 60)  # of the word accuracy
    assert quality_kept(45.0, 50.0, "rougeL") == pytest.approx(90.0)
    check_metric_for_best("per", "local", greater_is_better=False)
    with pytest.raises(ValueError, match="greater_is_better=false"):
        check_metric_for_best("per", "local", greater_is_better=True)
    with pytest.raises(ValueError, match="empty list of references"):
        error_rates(["a"], [[]])
