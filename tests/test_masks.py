"""Hard-concrete gates, MaskSet (expected size, deterministic masks, plan) and the hooks."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_batch, tiny_model
from torch import nn
from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

from nash_ds.masks import BETA, LIMIT_L, LIMIT_R, HardConcrete, MaskSet, attach
from nash_ds.models import family_for
from tests.conftest import prunable  # noqa: E402

METHODS = ("nash", "cofi")


def _set_log_alpha(ms: MaskSet, value: float = 10.0, **per_key) -> None:
    with torch.no_grad():
        for name, gate in ms.gates.items():
            gate.log_alpha.fill_(value)
            if name in per_key:
                gate.log_alpha.copy_(per_key[name].reshape(gate.log_alpha.shape))


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


# ---------------------------------------------------------------------- hard concrete
def test_hard_concrete_init_and_clamp():
    g = HardConcrete(3, 1000, init_mean=math.log(0.7 / 0.3))
    assert abs(g.log_alpha.mean().item() - math.log(0.7 / 0.3)) < 2e-3
    assert abs(g.log_alpha.std().item() - 0.01) < 2e-3
    g.clamp_(-1.0, 0.5)
    assert g.log_alpha.max().item() == 0.5


def test_hard_concrete_samples_differ_stay_in_unit_interval_and_have_gradients():
    g = HardConcrete(4, 16, init_mean=0.0).train()
    a, b = g(), g()
    assert not torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1 and ((a == 0) | (a == 1)).any()  # hard zeros/ones occur
    (a * torch.arange(16.0)).sum().backward()
    assert g.log_alpha.grad is not None and g.log_alpha.grad.abs().sum() > 0


def test_prob_zero_formula_and_deterministic_rule():
    g = HardConcrete(2, 5, init_mean=0.0)
    with torch.no_grad():
        g.log_alpha.copy_(torch.tensor([[-5.0, 3.0, -4.0, 4.0, 5.0], [5.0, 5.0, 5.0, 5.0, -6.0]]))
    p0 = torch.sigmoid(BETA * math.log(-LIMIT_L / LIMIT_R) - g.log_alpha)
    torch.testing.assert_close(g("alive"), 1 - p0)
    assert [round(x) for x in p0.sum(1).tolist()] == [2, 1]
    g.eval()
    expected = torch.tensor([[0.0, 1, 0, 1, 1], [1, 1, 1, 1, 0]])
    assert torch.equal(g(), expected) and torch.equal(g("deterministic"), expected)
    with pytest.raises(ValueError, match="mode"):
        g("soft")


# ---------------------------------------------------------------------- parity with stock
@pytest.mark.parametrize("method", METHODS)
def test_all_ones_masks_equal_stock_logits(preset, method):
    model = tiny_model(preset)
    fam = family_for(model)
    batch = tiny_batch()
    ref = _logits(model, batch)
    ms = MaskSet(fam, model.config, method=method).eval()
    handle = attach(model, fam, ms)
    _set_log_alpha(ms, 10.0)
    z = ms()
    assert all(bool((z[k] == 1).all()) for k in ms.names)
    got = _logits(model, batch)
    if method == "cofi" and preset in ("tiny-bart", "tiny-mbart"):  # LayerNorm recomputed by hand: up to rounding
        torch.testing.assert_close(got, ref)
    else:  # multiplications by exactly 1.0 (and T5's RMSNorm written to be bit-identical)
        assert torch.equal(got, ref)
    handle.remove()
    assert torch.equal(_logits(model, batch), ref)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_hooks_need_a_maskset_forward_first():
    model = tiny_model("tiny-t5")
    fam = family_for(model)
    attach(model, fam, MaskSet(fam, model.config))
    with pytest.raises(RuntimeError, match="maskset"):
        model(**tiny_batch())


def test_attach_rejects_a_maskset_of_another_shape():
    teacher = tiny_model("tiny-bart")
    fam = family_for(teacher)
    student = fam.make_student(teacher, [0, 3])
    with pytest.raises(ValueError, match="decoder layers"):
        attach(student, fam, MaskSet(fam, teacher.config, method="cofi"))


def test_gradients_reach_log_alpha_through_the_model(preset):
    model = tiny_model(preset)
    fam = family_for(model)
    ms = MaskSet(fam, model.config, method="cofi", seed=0).train()
    attach(model, fam, ms)
    out = ms()
    assert set(ms.names) <= set(out) and {"expected_sparsity", "expected_params"} <= set(out)
    (model(**tiny_batch()).logits.pow(2).mean() + out["expected_sparsity"]["model"]).backward()
    for name, gate in ms.gates.items():
        assert gate.log_alpha.grad is not None and gate.log_alpha.grad.abs().sum() > 0, name
    again = ms()
    assert not torch.equal(again["encoder_heads"], out["encoder_heads"])


# ---------------------------------------------------------------------- hidden dims == physically removed
def _slice_hidden(model, fam, kept: torch.Tensor) -> dict[str, torch.Tensor]:
    """State dict with the hidden dims outside ``kept`` removed (rows or columns by module role)."""
    cols = {id(m) for m in fam.token_embeddings(model) + fam.position_embeddings(model) + [fam.lm_head(model)]}
    rows, vec = set(), {id(n) for n in fam.norms(model)}
    for stack in ("encoder", "decoder"):
        for block in fam.layers(model, stack):
            for kind in fam.attention_kinds(stack):
                attn = fam.attention(block, kind)
                cols |= {id(p) for p in fam.attn_in_projs(attn)}
                rows.add(id(fam.attn_out_proj(attn)))
            cols |= {id(p) for p in fam.ffn_in_projs(block)}
            rows.add(id(fam.ffn_out_proj(block)))
    out = {k: v.clone() for k, v in model.state_dict().items()}  # buffers too (final_logits_bias)
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            key = f"{mname}.{pname}" if mname else pname
            if id(mod) in vec or (id(mod) in rows and pname == "bias") or (id(mod) in rows and p.dim() == 2):
                p = p[kept] if p.dim() == 1 else p[kept, :]
            elif id(mod) in cols and pname == "weight":
                p = p[:, kept]
            out[key] = p.detach().clone()
    return out


def _hidden_pruned_reference(model, fam, kept: torch.Tensor) -> nn.Module:
    """A stock model with d_model = len(kept) and the sliced weights (BART: head_dim kept by hand)."""
    d_new = len(kept)
    if isinstance(model, T5ForConditionalGeneration):
        ref = T5ForConditionalGeneration(T5Config.from_dict({**model.config.to_dict(), "d_model": d_new}))
        ref.lm_head.weight = nn.Parameter(ref.lm_head.weight.detach().clone())  # untied, like the source
    else:
        ref = BartForConditionalGeneration(BartConfig.from_dict({**model.config.to_dict(), "d_model": d_new}))
        dk = fam.head_dim(model.config, "encoder")
        for stack in ("encoder", "decoder"):
            for block in fam.layers(ref, stack):
                for kind in fam.attention_kinds(stack):
                    attn = fam.attention(block, kind)
                    inner = attn.num_heads * dk
                    attn.q_proj, attn.k_proj, attn.v_proj = (nn.Linear(d_new, inner) for _ in range(3))
                    attn.out_proj = nn.Linear(inner, d_new)
                    attn.head_dim, attn.scaling = dk, dk ** -0.5
    ref.load_state_dict(_slice_hidden(model, fam, kept), strict=True)
    return ref.eval()


@pytest.mark.parametrize("preset_name", ["tiny-t5-v1_1", "tiny-bart"])
def test_hidden_mask_equals_physically_removed_dims(preset_name):
    model = tiny_model(preset_name)
    fam = family_for(model)
    d = fam.d_model(model.config)
    dropped = torch.tensor([1, 5, 6, 20, 33, 40, 41, 63])
    keep = torch.ones(d, dtype=torch.bool)
    keep[dropped] = False
    ms = MaskSet(fam, model.config, method="cofi").eval()
    attach(model, fam, ms)
    _set_log_alpha(ms, 10.0, hidden=torch.where(keep, 10.0, -10.0))
    ms()
    assert ms.plan([0, 1, 2, 3]).hidden == torch.nonzero(keep).flatten().tolist()
    ref = _hidden_pruned_reference(model, fam, torch.nonzero(keep).flatten())
    batch = tiny_batch()
    torch.testing.assert_close(_logits(model, batch), _logits(ref, batch), rtol=1e-4, atol=1e-4)


def test_masked_layernorm_equals_layernorm_over_kept_dims():
    fam = family_for(BartConfig())
    norm = nn.LayerNorm(10)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    hidden = torch.tensor([1.0, 0, 1, 1, 0, 1, 1, 1, 0, 1])
    kept = torch.nonzero(hidden).flatten()
    x = torch.randn(3, 4, 10)
    small = nn.LayerNorm(len(kept))
    small.load_state_dict({"weight": norm.weight[kept], "bias": norm.bias[kept]})
    y = fam.masked_norm(norm, x, hidden=hidden)
    torch.testing.assert_close(y[..., kept], small(x[..., kept]))
    assert torch.equal(y[..., hidden == 0], torch.zeros(3, 4, 3))


# ---------------------------------------------------------------------- size, plan
def _count_from_plan(model, fam, plan) -> int:
    """Kept parameters of each Linear from the plan and the weight shapes (rows x columns kept)."""
    cfg = model.config
    d = fam.d_model(cfg)
    hid = d if plan.hidden is None else len(plan.hidden)
    heads = {("encoder", "self"): plan.encoder_heads, ("decoder", "self"): plan.decoder_self_heads,
             ("decoder", "cross"): plan.decoder_cross_heads}
    ffn = {"encoder": plan.encoder_ffn, "decoder": plan.decoder_ffn}
    total = 0
    for stack in ("encoder", "decoder"):
        num_h = fam.num_heads(cfg, stack)
        for layer, block in enumerate(fam.layers(model, stack)):
            for kind in fam.attention_kinds(stack):
                attn = fam.attention(block, kind)
                n = len(heads[stack, kind][layer])
                for p in fam.attn_in_projs(attn):  # [H*dk, d]: head rows, hidden columns
                    rows = p.weight.shape[0] // num_h * n
                    total += rows * hid + (rows if p.bias is not None else 0)
                o = fam.attn_out_proj(attn)  # [d, H*dk]
                total += hid * (o.weight.shape[1] // num_h * n) + (hid if o.bias is not None and n else 0)
            m = len(ffn[stack][layer])
            for p in fam.ffn_in_projs(block):  # [d_ff, d]
                total += m * hid + (m if p.bias is not None else 0)
            o = fam.ffn_out_proj(block)  # [d, d_ff]
            total += hid * m + (hid if o.bias is not None and m else 0)
    return total


@pytest.mark.parametrize("method", METHODS)
def test_expected_params_at_deterministic_masks_equal_pruned_count(preset, method):
    model = tiny_model(preset)
    fam = family_for(model)
    ms = MaskSet(fam, model.config, method=method, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for gate in ms.gates.values():
            gate.log_alpha.normal_(0.0, 3.0, generator=g)
        ms.gates["encoder_heads"].log_alpha[3].fill_(-10.0)  # every head of a layer gone
        if method == "cofi":
            ms.gates["encoder_mha"].log_alpha.fill_(10.0)
            ms.gates["encoder_mha"].log_alpha[1].fill_(-10.0)  # whole attention gone
            ms.gates["decoder_mlp"].log_alpha.fill_(10.0)
            ms.gates["decoder_mlp"].log_alpha[2].fill_(-10.0)  # whole FFN gone
    plan = ms.plan([0, 1, 2, 3])
    assert plan.encoder_heads[3] == []
    if method == "cofi":
        assert plan.encoder_heads[1] == [] and plan.decoder_ffn[2] == [] and plan.hidden is not None
        assert 0 < len(plan.hidden) < 64
    else:
        assert plan.hidden is None and plan.decoder_self_heads == [[0, 1, 2, 3]] * 4
    expected = ms.expected_params(ms.deterministic_masks())
    assert expected["model"].item() == _count_from_plan(model, fam, plan)
    assert ms.deterministic_params()["model"] == expected["model"].item()
    # and with nothing pruned, the expected size is the stock model's count
    _set_log_alpha(ms, 10.0)
    full = ms.expected_params(ms.deterministic_masks())
    assert {k: int(v) for k, v in full.items()} == prunable(model)


def test_expected_size_matches_alive_probabilities_by_hand():
    model = tiny_model("tiny-t5")
    fam = family_for(model)
    ms = MaskSet(fam, model.config, method="nash", droprate_init=0.3)
    alive = {k: g("alive") for k, g in ms.gates.items()}
    enc = alive["encoder_heads"].sum() * 4 * 64 * 16 + alive["encoder_ffn"].sum() * 2 * 64
    exp = ms.expected_params()
    torch.testing.assert_close(exp["encoder"], enc.double())
    assert exp["decoder"].item() == ms.dense_prunable_params()["decoder"]
    # at log_alpha = log(0.7 / 0.3) a unit is zero with probability sigmoid(beta log(-l/r) - log_alpha)
    p_zero = 1 / (1 + math.exp(-(BETA * math.log(-LIMIT_L / LIMIT_R) - math.log(0.7 / 0.3))))
    assert ms.expected_sparsity()["encoder"].item() == pytest.approx(p_zero, abs=2e-3)


def test_model_sparsity_counts_the_decoder_cut():
    teacher = tiny_model("tiny-t5")
    fam = family_for(teacher)
    student = fam.make_student(teacher, [0, 3])
    ms = MaskSet(fam, student.config, method="nash", teacher_config=teacher.config).eval()
    _set_log_alpha(ms, 10.0)
    s = ms()["expected_sparsity"]
    dense_t, dense_s = fam.dense_prunable_params(teacher.config), fam.dense_prunable_params(student.config)
    assert s["encoder"].item() < 1e-4 and s["decoder"].item() < 1e-4
    torch.testing.assert_close(s["model"].item(), 1 - dense_s["model"] / dense_t["model"], atol=1e-4, rtol=0)
    assert ms.deterministic_sparsity()["model"] == pytest.approx(1 - dense_s["model"] / dense_t["model"])
    assert {"expected_sparsity/model", "alive/encoder_heads"} <= set(ms.summary())
    with pytest.raises(ValueError, match="decoder layers"):
        ms.plan([0, 1, 3])


def test_maskset_layout_and_errors():
    torch.manual_seed(0)  # the log_alpha init is random: N(mu, 0.01)
    model = tiny_model("tiny-bart")
    fam = family_for(model)
    nash = MaskSet(fam, model.config, method="nash")
    assert nash.names == ["encoder_heads", "encoder_ffn"]
    cofi = MaskSet(fam, model.config, method="cofi", droprate_init=0.3)
    shapes = {k: tuple(v.shape) for k, v in cofi.eval()().items() if k in cofi.names}
    assert shapes == {"encoder_heads": (4, 4), "encoder_mha": (4,), "decoder_self_heads": (4, 4),
                      "decoder_self_mha": (4,), "decoder_cross_heads": (4, 4), "decoder_cross_mha": (4,),
                      "encoder_ffn": (4, 128), "encoder_mlp": (4,), "decoder_ffn": (4, 128),
                      "decoder_mlp": (4,), "hidden": (64,)}
    assert cofi.gates["encoder_mha"].log_alpha.mean().item() == pytest.approx(10.0, abs=0.01)
    assert cofi.gates["encoder_ffn"].log_alpha.mean().item() == pytest.approx(math.log(0.7 / 0.3), abs=0.01)
    cofi.clamp_()
    assert cofi.gates["encoder_mha"].log_alpha.max().item() == pytest.approx(math.log(100.0))
    with pytest.raises(ValueError, match="method"):
        MaskSet(fam, model.config, method="movement")
    with pytest.raises(ValueError, match="droprate_init"):
        MaskSet(fam, model.config, droprate_init=1.0)
    with pytest.raises(ValueError, match="keys"):
        nash.expected_params({"encoder_heads": torch.ones(4, 4)})


# ---------------------------------------------------------------------- deterministic masks
def test_per_layer_rule_rounds_each_layer_and_global_rounds_once():
    from nash_ds.masks import BETA, deterministic_gates, prob_zero

    # 3 layers x 4 heads, each head at P(z=0) ~= 0.3: per layer round(1.2) = 1 zero each (3 of 12 = 25%),
    # globally round(3.6) = 4 zeros (33%, nearer the expected 30%)
    c = BETA * math.log(-LIMIT_L / LIMIT_R)  # P(z=0) = sigmoid(c - log_alpha)
    la = torch.full((3, 4), c - math.log(0.3 / 0.7)) + torch.linspace(-1e-3, 1e-3, 12).view(3, 4)
    assert torch.allclose(prob_zero(la), torch.full((3, 4), 0.3), atol=1e-3)
    per_layer = deterministic_gates(la, rule="per_layer")
    assert per_layer.sum(dim=1).tolist() == [3.0, 3.0, 3.0]
    assert (per_layer == 0).nonzero()[:, 1].tolist() == [0, 0, 0]  # each layer drops its smallest log_alpha
    glob = deterministic_gates(la, rule="global")
    assert int((glob == 0).sum()) == 4
    assert glob.flatten()[:4].tolist() == [0.0] * 4  # the 4 smallest overall


def test_maskset_uses_its_rule_and_the_report_can_say_which():
    model = tiny_model("tiny-t5")
    fam = family_for(model)
    for rule in ("global", "per_layer"):
        ms = MaskSet(fam, model.config, method="nash", deterministic=rule)
        assert ms.deterministic_rule == rule and all(g.rule == rule for g in ms.gates.values())
    with pytest.raises(ValueError, match="per_layer"):
        MaskSet(fam, model.config, method="nash", deterministic="by_magic")


def test_evaluation_masks_come_from_the_fp32_values_not_a_bf16_copy():
    """Under bf16 the model's log_alpha is rounded; evaluation must use the fp32 masters, as finalize does."""
    from nash_ds.masks import Masking

    model = tiny_model("tiny-t5")
    fam = family_for(model)
    ms = MaskSet(fam, model.config, method="nash")
    with torch.no_grad():  # four encoder heads whose order only fp32 can tell apart
        ms.gates["encoder_heads"].log_alpha.copy_(torch.tensor([[1.001, 1.002, 1.003, 1.004]] * 4) - 3.0)
    masters = {n: g.log_alpha.detach().clone() for n, g in ms.gates.items()}
    from_fp32 = ms.deterministic_masks(masters)
    ms.to(torch.bfloat16)  # the model's copy, as a bf16 DeepSpeed engine holds it
    from_bf16 = ms.deterministic_masks()
    assert not torch.equal(from_bf16["encoder_heads"], from_fp32["encoder_heads"])  # bf16 would score other masks
    masking = Masking(fam, model.config, ms)
    masking.master_log_alphas = lambda: masters  # what compat.full_fp32_values returns under DeepSpeed
    with masking.evaluation() as masks:
        assert all(torch.equal(masks[k], from_fp32[k]) for k in masks)
        assert all(torch.equal(ms.current[k], from_fp32[k]) for k in masks)  # what the hooks apply
    assert ms.training
