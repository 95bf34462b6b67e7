"""Family registry, accessors, parameter counts, decoder layer selection, make_student, load_model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import VOCAB_SIZE, tiny_batch, tiny_model
from transformers import (BartConfig, GPT2Config, MBartConfig, MBartForConditionalGeneration, MT5Config,
                          MT5ForConditionalGeneration, T5Config, T5ForConditionalGeneration)

from nash_ds.models import PRESETS, family_for, load_model, select_decoder_layers, supported_model_types
from nash_ds.models.bart import BartFamily
from nash_ds.models.t5 import T5Family
from tests.conftest import prunable


# ---------------------------------------------------------------------- registry
def test_family_for_dispatches_on_model_type():
    assert isinstance(family_for(T5Config()), T5Family)
    assert isinstance(family_for(T5Config(feed_forward_proj="gated-gelu")), T5Family)
    assert isinstance(family_for(BartConfig()), BartFamily)
    assert isinstance(family_for(tiny_model("tiny-bart")), BartFamily)  # a model works too


def test_family_for_rejects_unknown_model_type():
    with pytest.raises(ValueError, match="gpt2") as e:
        family_for(GPT2Config())
    for t in ("t5", "bart"):
        assert t in str(e.value)
    assert {"t5", "bart"} <= set(supported_model_types())


# ---------------------------------------------------------------------- accessors and sizes
def test_accessors_find_the_projections(preset):
    model = tiny_model(preset)
    fam, cfg = family_for(model), model.config
    d = fam.d_model(cfg)
    for stack in ("encoder", "decoder"):
        blocks = fam.layers(model, stack)
        assert len(blocks) == fam.num_layers(cfg, stack) == 4
        h, dk, ff = fam.num_heads(cfg, stack), fam.head_dim(cfg, stack), fam.d_ff(cfg, stack)
        for block in blocks:
            for kind in fam.attention_kinds(stack):
                attn = fam.attention(block, kind)
                assert fam.attn_out_proj(attn).in_features == h * dk
                assert [p.out_features for p in fam.attn_in_projs(attn)] == [h * dk] * 3
            assert fam.ffn_out_proj(block).in_features == ff
            assert all(p.out_features == ff and p.in_features == d for p in fam.ffn_in_projs(block))
            assert len(fam.ffn_in_projs(block)) == (2 if preset in ("tiny-t5-v1_1", "tiny-mt5") else 1)
    with pytest.raises(ValueError, match="cross"):
        fam.attention(fam.layers(model, "encoder")[0], "cross")
    with pytest.raises(ValueError, match="stack"):
        fam.layers(model, "middle")
    # hidden-dim accessors cover every d_model-sized norm and embedding
    assert all(n.weight.shape == (d,) for n in fam.norms(model))
    per_stack = 4 if preset == "tiny-mbart" else 2  # mBART: layernorm_embedding and a final layer_norm per stack
    assert len(fam.norms(model)) == 4 * 2 + 4 * 3 + per_stack  # per sublayer + the per-stack norms
    assert all(e.weight.shape[1] == d for e in fam.token_embeddings(model) + fam.position_embeddings(model))
    assert fam.lm_head(model).in_features == d


@pytest.mark.parametrize("preset_name, per_head, per_ffn", [
    ("tiny-t5", 4 * 64 * 16, 2 * 64), ("tiny-t5-v1_1", 4 * 64 * 16, 3 * 64),
    ("tiny-bart", 4 * 64 * 16 + 3 * 16, 2 * 64 + 1)])
def test_params_per_unit(preset_name, per_head, per_ffn):
    model = tiny_model(preset_name)
    fam, cfg = family_for(model), model.config
    for stack in ("encoder", "decoder"):
        assert fam.params_per_ffn_dim(cfg, stack) == per_ffn
        for kind in fam.attention_kinds(stack):
            assert fam.params_per_head(cfg, stack, kind) == per_head


def test_count_prunable_params_matches_formula(preset):
    model = tiny_model(preset)
    fam, cfg = family_for(model), model.config
    counted = prunable(model)
    assert counted == fam.dense_prunable_params(cfg)
    d, h, dk, ff = 64, 4, 16, 128
    if preset.startswith("tiny-t5"):  # method.md's formula
        n_mlp = 3 if preset == "tiny-t5-v1_1" else 2
        assert counted["encoder"] == 4 * (4 * d * h * dk + n_mlp * d * ff)
        assert counted["decoder"] == 4 * (8 * d * h * dk + n_mlp * d * ff)
    # from the modules themselves: every q/k/v/o and FFN Linear, weights and biases
    linears = 0
    for stack in ("encoder", "decoder"):
        for block in fam.layers(model, stack):
            mods = [fam.attn_out_proj(fam.attention(block, k)) for k in fam.attention_kinds(stack)]
            mods += [p for k in fam.attention_kinds(stack) for p in fam.attn_in_projs(fam.attention(block, k))]
            mods += fam.ffn_in_projs(block) + [fam.ffn_out_proj(block)]
            linears += sum(p.numel() for m in mods for p in m.parameters())
    assert counted["model"] == linears


# ---------------------------------------------------------------------- layer selection
@pytest.mark.parametrize("k, expected", [(1, [0]), (2, [0, 11]), (3, [0, 5, 11]), (4, [0, 3, 7, 11]),
                                         (12, list(range(12)))])
def test_select_uniform(k, expected):
    assert select_decoder_layers(12, k, "uniform") == expected


def test_select_low_high_explicit():
    assert select_decoder_layers(12, 3, "low") == [0, 1, 2]
    assert select_decoder_layers(12, 3, "high") == [9, 10, 11]
    assert select_decoder_layers(12, 3, [0, 6, 11]) == [0, 6, 11]  # DistilBART's table


@pytest.mark.parametrize("k, rule, match", [
    (0, "uniform", "k=0"), (13, "uniform", "L=12"), (2, "middle", "middle"),
    (2, [5, 1], "sorted"), (2, [1, 1], "unique"), (2, [0, 12], r"\[0, 12\)"), (3, [0, 5], "k=3"),
    (2, [0, -1], "sorted")])
def test_select_errors(k, rule, match):
    with pytest.raises(ValueError, match=match):
        select_decoder_layers(12, k, rule)


# ---------------------------------------------------------------------- make_student
def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_make_student_t5_dropping_layer0_carries_the_bias():
    teacher = tiny_model("tiny-t5")
    before = _snapshot(teacher)
    fam = family_for(teacher)
    kept = [1, 3]
    student = fam.make_student(teacher, kept)
    # teacher untouched
    assert len(teacher.decoder.block) == 4 and teacher.config.num_decoder_layers == 4
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    # student: stock class, config and the bias moved onto its new block 0
    assert type(student) is type(teacher) and student.config.num_decoder_layers == 2
    sa0 = student.decoder.block[0].layer[0].SelfAttention
    t_bias = teacher.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    assert sa0.has_relative_attention_bias and torch.equal(sa0.relative_attention_bias.weight, t_bias)
    assert sa0.relative_attention_bias.weight is not t_bias
    assert not student.decoder.block[1].layer[0].SelfAttention.has_relative_attention_bias

    # hand-built reference: a fresh stock model with the right weights copied in
    cfg = T5Config.from_dict({**teacher.config.to_dict(), "num_decoder_layers": 2})
    ref = T5ForConditionalGeneration(cfg).eval()
    sd = {}
    for key, value in teacher.state_dict().items():
        if key.startswith("decoder.block."):
            i = int(key.split(".")[2])
            if i in kept:
                sd[key.replace(f"decoder.block.{i}.", f"decoder.block.{kept.index(i)}.", 1)] = value
        else:
            sd[key] = value
    bias_key = "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    sd[bias_key] = t_bias
    ref.load_state_dict(sd, strict=True)
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(student(**batch).logits, ref(**batch).logits, rtol=0, atol=0)
    assert set(student.state_dict()) == set(ref.state_dict())


@pytest.mark.parametrize("kept", [[0, 3], [1, 2], [3]])
def test_copy_student_equals_make_student(preset, kept):
    """The ZeRO-3 path (student from its config, filled tensor by tensor) builds make_student's model."""
    from nash_ds.stages.prune import copy_student

    teacher = tiny_model(preset)
    fam = family_for(teacher)
    ref = fam.make_student(teacher, kept).eval()
    student = copy_student(teacher, fam, kept, ds={"zero_optimization": {"stage": 0}}).eval()
    assert type(student) is type(ref) and student.config.to_dict() == ref.config.to_dict()
    tied = student.lm_head.weight is student.get_input_embeddings().weight
    assert tied == (ref.lm_head.weight is ref.get_input_embeddings().weight)
    a, b = student.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(student(**batch).logits, ref(**batch).logits, rtol=0, atol=0)


def test_make_student_roundtrips_and_generates(preset, tmp_path):
    teacher = tiny_model(preset)
    fam = family_for(teacher)
    student = fam.make_student(teacher, [0, 3]).eval()
    assert fam.num_layers(student.config, "decoder") == 2 == len(fam.layers(student, "decoder"))
    # untied (Flan-T5 style) heads stay untied, tied ones tied
    tied = student.lm_head.weight is student.get_input_embeddings().weight
    assert tied == (teacher.lm_head.weight is teacher.get_input_embeddings().weight)
    batch = tiny_batch()
    student.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path)).eval()
    assert tied == (loaded.lm_head.weight is loaded.get_input_embeddings().weight)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, student(**batch).logits, rtol=0, atol=0)
        # layer_idx renumbered: cached generation equals uncached
        kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=4,
                  do_sample=False)
        assert torch.equal(student.generate(**kw, use_cache=True), student.generate(**kw, use_cache=False))


# ---------------------------------------------------------------------- load_model
def test_load_model_presets_are_seeded_and_take_special_ids():
    a = load_model("preset:tiny-bart", vocab_size=VOCAB_SIZE, pad_token_id=5, eos_token_id=6, bos_token_id=7)
    b = load_model("preset:tiny-bart", vocab_size=VOCAB_SIZE, pad_token_id=5, eos_token_id=6, bos_token_id=7)
    c = load_model("preset:tiny-bart", vocab_size=VOCAB_SIZE, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    cfg = a.config
    assert (cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id) == (VOCAB_SIZE, 5, 6, 7)
    assert cfg.decoder_start_token_id == 6  # BART starts from eos
    t5 = load_model("preset:tiny-t5", pad_token_id=3)
    assert t5.config.decoder_start_token_id == 3  # T5 starts from pad


def test_load_model_errors(tmp_path):
    with pytest.raises(ValueError, match="tiny-t5"):
        load_model("preset:huge-t5")
    with pytest.raises(ValueError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match="missing-dir"):
        load_model("./missing-dir")
    (tmp_path / "config.json").write_text(json.dumps(GPT2Config(n_layer=1).to_dict()))
    with pytest.raises(ValueError, match="gpt2"):
        load_model(str(tmp_path))


def test_presets_are_tiny():
    assert set(PRESETS) == {"demo-t5", "tiny-t5", "tiny-t5-v1_1", "tiny-bart", "tiny-mt5", "tiny-mbart"}
    for name in PRESETS:
        assert sum(p.numel() for p in tiny_model(name).parameters()) < 1_000_000


def test_make_student_refuses_a_masked_teacher():
    from nash_ds.masks import MaskSet, attach

    teacher = tiny_model("tiny-t5")
    fam = family_for(teacher)
    handle = attach(teacher, fam, MaskSet(fam, teacher.config))
    with pytest.raises(ValueError, match="masks attached"):
        fam.make_student(teacher, [0, 3])
    handle.remove()
    fam.make_student(teacher, [0, 3])


# ---------------------------------------------------------------------- related model types
@pytest.mark.parametrize("build", [
    lambda: MT5ForConditionalGeneration(MT5Config(
        vocab_size=VOCAB_SIZE, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2, num_decoder_layers=3,
        relative_attention_num_buckets=8)),
    lambda: MBartForConditionalGeneration(MBartConfig(  # pre-norm; encoder and decoder sizes differ
        vocab_size=VOCAB_SIZE, d_model=64, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=96, max_position_embeddings=64)),
], ids=["mt5", "mbart"])
def test_mt5_and_mbart_share_their_family(build):
    from nash_ds.masks import MaskSet, attach

    torch.manual_seed(0)
    model = build().eval()
    fam = family_for(model)
    assert prunable(model) == fam.dense_prunable_params(model.config)
    batch = tiny_batch()
    with torch.no_grad():
        ref = model(**batch).logits
        ms = MaskSet(fam, model.config, method="cofi").eval()
        attach(model, fam, ms)
        for gate in ms.gates.values():
            gate.log_alpha.fill_(10.0)
        ms()
        torch.testing.assert_close(model(**batch).logits, ref)


@pytest.mark.parametrize("shard", [None, "20KB"])
def test_checkpoint_tensors_are_read_only_when_the_head_is_stored_apart(tmp_path, shard):
    """What the ZeRO-3 untying reads: both tensors of an untied (T5 v1.1) checkpoint, single file or
    sharded with an index; nothing from a tied one, which stores the embedding only."""
    from nash_ds.compat import read_checkpoint_tensors

    keys = ["lm_head.weight", "shared.weight"]
    kw = {} if shard is None else {"max_shard_size": shard}
    untied, tied = tiny_model("tiny-t5-v1_1"), tiny_model("tiny-t5")
    untied.save_pretrained(tmp_path / "untied", **kw)
    tied.save_pretrained(tmp_path / "tied", **kw)
    assert (shard is not None) == (tmp_path / "untied" / "model.safetensors.index.json").exists()
    got = read_checkpoint_tensors(str(tmp_path / "untied"), keys)
    assert torch.equal(got["lm_head.weight"], untied.lm_head.weight)
    assert torch.equal(got["shared.weight"], untied.shared.weight)
    assert read_checkpoint_tensors(str(tmp_path / "tied"), keys) == {}
