"""T5-XL and BART-large shapes on the meta device: counting, the decoder cut, masks -> pruning plan ->
pruned config and sizes, all without allocating a weight (T5-XL in fp32 would be 11 GiB)."""

from __future__ import annotations

import psutil
import pytest
import torch

from nash_ds.memory import meta_model, model_config, param_stats
from nash_ds.masks import LIMIT_L, LIMIT_R, MaskSet
from nash_ds.models import family_for, register_export_classes, select_decoder_layers
from nash_ds.models.pruning import is_remote, num_params_from_plan, pruned_config
from tests.conftest import prunable  # noqa: E402

XL = {"d": 2048, "heads": 32, "d_kv": 64, "d_ff": 5120, "layers": 24, "vocab": 32128}


@pytest.fixture(scope="module")
def rss_start() -> int:
    return psutil.Process().memory_info().rss


@pytest.fixture(scope="module")
def t5_xl(rss_start):
    return meta_model(model_config("t5-xl"))


def _all_meta(model) -> bool:
    return all(p.is_meta for p in model.parameters())


def _drop(maskset: MaskSet, pattern: dict[str, list[int]]) -> None:
    """Deterministic masks with exactly pattern[key][layer] units dropped (the lowest indices) per row."""
    with torch.no_grad():
        for key, drops in pattern.items():
            la = maskset.gates[key].log_alpha
            la.fill_(20.0)  # P(z = 0) ~ 1e-9: kept
            for row, n in enumerate(drops):
                la[row, :n] = -20.0  # P(z = 0) ~ 1 - 1e-8: dropped


def test_t5_xl_counts_on_meta(t5_xl):
    fam = family_for(t5_xl.config)
    assert _all_meta(t5_xl)
    assert param_stats(t5_xl)[0] == 2_849_757_184  # Flan-T5-XL: untied head
    dense = fam.dense_prunable_params(t5_xl.config)
    per_layer_enc = 4 * XL["d"] * XL["heads"] * XL["d_kv"] + 3 * XL["d"] * XL["d_ff"]  # gated: wi_0, wi_1, wo
    per_layer_dec = 8 * XL["d"] * XL["heads"] * XL["d_kv"] + 3 * XL["d"] * XL["d_ff"]
    assert dense == {"encoder": 24 * per_layer_enc, "decoder": 24 * per_layer_dec,
                     "model": 24 * (per_layer_enc + per_layer_dec)}
    assert prunable(t5_xl) == dense


def test_t5_xl_nash_plan_and_pruned_sizes_on_meta(t5_xl, rss_start):
    register_export_classes()
    fam = family_for(t5_xl.config)
    kept = select_decoder_layers(24, 4, "uniform")
    assert kept == [0, 7, 15, 23]
    student = fam.make_student(t5_xl, kept)
    assert _all_meta(student) and len(fam.layers(student, "decoder")) == 4
    masks = MaskSet(fam, student.config, method="nash", teacher_config=t5_xl.config)
    head_drops = [layer % 8 for layer in range(24)]
    ffn_drops = [512 * (layer % 3) for layer in range(24)]
    _drop(masks, {"encoder_heads": head_drops, "encoder_ffn": ffn_drops})
    det = masks.deterministic_masks()
    assert [int((det["encoder_heads"][r] == 0).sum()) for r in range(24)] == head_drops
    assert [int((det["encoder_ffn"][r] == 0).sum()) for r in range(24)] == ffn_drops

    per_head, per_dim = fam.params_per_head(student.config, "encoder", "self"), fam.params_per_ffn_dim(
        student.config, "encoder")
    assert (per_head, per_dim) == (4 * XL["d"] * XL["d_kv"], 3 * XL["d"])
    dense = fam.dense_prunable_params(student.config)
    want_enc = dense["encoder"] - per_head * sum(head_drops) - per_dim * sum(ffn_drops)
    expected = masks.expected_params(det)
    assert float(expected["encoder"]) == want_enc
    assert float(expected["decoder"]) == dense["decoder"] == 4 * (8 * XL["d"] * XL["heads"] * XL["d_kv"]
                                                                    + 3 * XL["d"] * XL["d_ff"])
    sparsity = masks.expected_sparsity(det)
    teacher_dense = fam.dense_prunable_params(t5_xl.config)["model"]
    assert float(sparsity["model"]) == pytest.approx(1 - (want_enc + dense["decoder"]) / teacher_dense)

    plan = masks.plan(kept)
    assert [len(h) for h in plan.encoder_heads] == [32 - n for n in head_drops]
    assert plan.encoder_heads[3] == list(range(3, 32))  # the lowest indices were dropped
    assert [len(f) for f in plan.encoder_ffn] == [5120 - n for n in ffn_drops]
    assert plan.kept_decoder_layers == kept
    new_config = pruned_config(student.config, plan)
    assert is_remote(new_config)  # per-layer widths need the exported modeling code
    pruned = meta_model(new_config)
    assert _all_meta(pruned)
    counted = prunable(pruned)
    assert counted["encoder"] == want_enc and counted["decoder"] == dense["decoder"]
    assert param_stats(pruned)[0] == num_params_from_plan(student.config, plan)
    assert param_stats(pruned)[0] < param_stats(student)[0] < param_stats(t5_xl)[0]
    # nothing of the 11 GiB was ever allocated
    assert psutil.Process().memory_info().rss - rss_start < 1.5 * 2**30


def test_t5_xl_uniform_plan_maps_to_a_stock_config(t5_xl):
    fam = family_for(t5_xl.config)
    student = fam.make_student(t5_xl, [0, 11, 23])
    masks = MaskSet(fam, student.config, method="nash")
    _drop(masks, {"encoder_heads": [8] * 24, "encoder_ffn": [1024] * 24})
    plan = masks.plan([0, 11, 23])
    # a stock config covers both stacks: the decoder must be cut the same way to stay stock
    plan.decoder_self_heads = [list(plan.encoder_heads[0]) for _ in range(3)]
    plan.decoder_cross_heads = [list(plan.encoder_heads[0]) for _ in range(3)]
    plan.decoder_ffn = [list(plan.encoder_ffn[0]) for _ in range(3)]
    new_config = pruned_config(student.config, plan)
    assert not is_remote(new_config)
    assert (new_config.num_heads, new_config.d_ff, new_config.num_decoder_layers) == (24, 4096, 3)
    pruned = meta_model(new_config)
    assert param_stats(pruned)[0] == num_params_from_plan(student.config, plan)


def test_bart_large_nash_plan_counts_on_meta():
    register_export_classes()
    teacher = meta_model(model_config("bart-large"))
    fam = family_for(teacher.config)
    assert param_stats(teacher)[0] == 406_291_456
    assert prunable(teacher) == fam.dense_prunable_params(teacher.config)
    kept = select_decoder_layers(12, 3, "uniform")
    student = fam.make_student(teacher, kept)
    assert _all_meta(student)
    masks = MaskSet(fam, student.config, method="nash", teacher_config=teacher.config)
    _drop(masks, {"encoder_heads": [2 * (i % 3) for i in range(12)], "encoder_ffn": [256 * (i % 4) for i in range(12)]})
    det = masks.deterministic_masks()
    plan = masks.plan(kept)
    pruned = meta_model(pruned_config(student.config, plan))
    assert _all_meta(pruned)
    counted = prunable(pruned)
    assert counted["encoder"] == int(masks.expected_params(det)["encoder"])
    assert counted["decoder"] == fam.dense_prunable_params(student.config)["decoder"]
    assert param_stats(pruned)[0] == num_params_from_plan(student.config, plan)


def test_hard_concrete_constants_make_the_pattern_exact():
    """The +-20 log_alpha used above give P(z=0) within 2e-8 of 0 and 1, so round() is exact for
    any row of up to 10^7 units."""
    import math

    def p_zero(la: float) -> float:
        return 1 / (1 + math.exp(-(2 / 3 * math.log(-LIMIT_L / LIMIT_R) - la)))

    assert p_zero(20.0) < 2e-8 and 1 - p_zero(-20.0) < 2e-8
