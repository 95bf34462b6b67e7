"""The latency model: fitting, prediction, expected latency from gates, choice of k, profile files."""

from __future__ import annotations

import json

import pytest
import torch

from nash_ds.latency_model import (
    LatencyModel,
    LatencyTarget,
    _nonnegative_lstsq,
    cached_profile,
    load_profile,
    probe_grid,
    save_profile,
    shape_fingerprint,
)
from nash_ds.models import preset_config
from nash_ds.plan import PruningPlan


def synthetic(config=None, **over) -> LatencyModel:
    """A model with known coefficients: 8+8 layers, 4 heads, d_ff 128, 16 tokens out."""
    config = config or preset_config("demo-t5")
    enc = {"base": 2.0, "attn": 0.3, "head": 0.05, "ffn": 0.1, "dim": 0.002} | over.get("encoder", {})
    dec = {"first0": 5.0, "first_layer": 1.0, "token0": 2.0, "token_layer": 1.0} | over.get("decoder", {})
    key = {"shape": shape_fingerprint(config), "model_type": "t5", "device": "cpu:test", "dtype": "float32",
           "batch_size": 1, "source_length": 64, "new_tokens": 16, "threads": 1}
    return LatencyModel(key=key, num_encoder_layers=8, num_decoder_layers=8, num_heads=4, d_ff=128, encoder=enc,
                        decoder=dec)


def test_prediction_is_the_formula():
    m = synthetic()
    enc_full = 2.0 + 8 * (0.3 + 4 * 0.05 + 0.1 + 128 * 0.002)
    assert m.encoder_ms([4] * 8, [128] * 8) == pytest.approx(enc_full)
    assert m.decoder_ms(8) == pytest.approx(5.0 + 8 + 15 * (2.0 + 8))
    assert m.dense_ms() == pytest.approx(enc_full + 13 + 150)
    # a removed sublayer also loses its fixed cost
    assert m.encoder_ms([0] * 8, [128] * 8) == pytest.approx(enc_full - 8 * (0.3 + 0.2))


def test_expected_latency_is_differentiable_and_equals_the_plan_at_0_1_gates():
    m = synthetic()
    heads = torch.zeros(8, 4)
    heads[:, :2] = 1.0
    ffn = torch.ones(8, 128)
    ffn[3] = 0.0  # a whole FFN gone
    plan = PruningPlan.full(num_encoder_layers=8, num_decoder_layers=2, num_heads=4, encoder_ffn=128, decoder_ffn=128)
    plan.encoder_heads = [[0, 1]] * 8
    plan.encoder_ffn = [list(range(128))] * 3 + [[]] + [list(range(128))] * 4
    assert float(m.expected_ms(heads, ffn, 2)) == pytest.approx(m.plan_ms(plan)["generate_ms"])
    alive = torch.full((8, 4), 0.7, requires_grad=True)
    m.expected_ms(alive, torch.full((8, 128), 0.5), 2).backward()
    assert (alive.grad > 0).all()  # keeping a head more likely costs time


def test_nonnegative_least_squares_recovers_coefficients_and_never_goes_negative():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 3, generator=g, dtype=torch.float64)
    true = torch.tensor([2.0, 0.5, 0.0], dtype=torch.float64)
    y = x @ true + 1e-4 * torch.randn(20, generator=g, dtype=torch.float64)
    coef = _nonnegative_lstsq(x, y)
    torch.testing.assert_close(coef, true, atol=2e-3, rtol=0)
    y2 = x @ torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    assert (_nonnegative_lstsq(x, y2) >= 0).all()


def test_probe_grid_covers_depths_and_widths():
    grid = probe_grid(12, 3072, 12)
    assert {p["k"] for p in grid if (p["heads"], p["ffn"]) == (12, 3072)} == {1, 6, 12}
    assert {(p["heads"], p["ffn"]) for p in grid if p["k"] == 1} >= {(0, 3072), (12, 0), (6, 1536)}


def test_choose_k_takes_the_largest_reachable_depth_or_names_the_best_reachable_speedup():
    m = synthetic()
    k = m.choose_k(2.0, max_encoder_sparsity=0.6)
    assert m.best_speedup(k, 0.6) >= 2.0 and (k == 8 or m.best_speedup(k + 1, 0.6) < 2.0)
    assert m.choose_k(2.0, max_encoder_sparsity=0.6, k=2) == 2
    with pytest.raises(ValueError, match=r"best reachable speedup is \d+\.\d\dx \(k=1"):
        m.choose_k(50.0, max_encoder_sparsity=0.6)
    with pytest.raises(ValueError, match="not reachable with prune.decoder_layers=8"):
        m.choose_k(2.0, max_encoder_sparsity=0.6, k=8)


def test_latency_target_is_an_encoder_budget_ramped_from_zero():
    m = synthetic()
    t = LatencyTarget(model=m, k=1, target_speedup=3.0)
    enc_full = m.encoder_ms([4] * 8, [128] * 8)
    budget = m.dense_ms() / 3.0 - m.decoder_ms(1)
    assert 0 < budget < enc_full
    assert t.final_fraction == pytest.approx(1 - budget / enc_full)
    assert t.fraction_target(0, 10) == 0.0 and t.fraction_target(10, 10) == pytest.approx(t.final_fraction)
    assert t.fraction_target(5, 10) == pytest.approx(t.final_fraction / 2)
    assert t.speedup_at(t.final_fraction) == pytest.approx(3.0)  # the budget met means X times faster
    full = torch.ones(8, 4), torch.ones(8, 128)
    assert t.predicted_speedup(*full) == pytest.approx(t.cut_speedup)
    assert float(t.expected_fraction(*full)) == pytest.approx(0.0)
    easy = LatencyTarget(model=m, k=1, target_speedup=1.1)  # the cut alone is faster: no encoder pruning asked
    assert easy.final_fraction == 0.0


def test_profile_files_round_trip_and_are_keyed_by_shape(tmp_path):
    cfg = preset_config("demo-t5")
    m = synthetic(cfg)
    path = tmp_path / "profile" / "latency.json"
    save_profile(m, path)
    assert cached_profile(path, m.key) == m
    assert cached_profile(path, {**m.key, "batch_size": 8}) is None
    assert load_profile(str(path), config=cfg) == m
    with pytest.raises(ValueError, match="0 profiles of this model's shape"):
        load_profile(str(path), config=preset_config("tiny-t5"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not a latency.json"):
        load_profile(str(tmp_path / "bad.json"), config=cfg)
    assert json.loads(path.read_text())["profiles"]


def test_shape_fingerprint_ignores_names_and_ids_but_not_sizes():
    a, b = preset_config("demo-t5"), preset_config("demo-t5", pad_token_id=0, eos_token_id=1)
    b._name_or_path = "somewhere/else"
    assert shape_fingerprint(a) == shape_fingerprint(b)
    assert shape_fingerprint(a) != shape_fingerprint(preset_config("tiny-t5"))
