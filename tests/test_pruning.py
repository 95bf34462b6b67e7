"""Physical pruning and export: the pruned model computes what the masked model computes.

Reference "masked model" = the stock model with dropped units zeroed (o / out_proj columns of
dropped heads, wo / fc2 columns of dropped FFN dims, a removed sublayer entirely, output bias
included) and, for hidden-dim plans, hooks that zero the dropped dims of every embedding and
sublayer output and compute every norm over the kept dims (CoFi's convention).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSeq2SeqLM,
    BartConfig,
    BartForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING  # noqa: E402

from nash_ds.export import atomic_dir, save_hf_dir  # noqa: E402
from nash_ds.models.pruning import is_remote, num_params_from_plan, prune_model, validate_plan  # noqa: E402
from nash_ds.plan import PruningPlan  # noqa: E402
from tests.conftest import prunable  # noqa: E402

# NASH-like: a shorter decoder (transformers 5.24 sizes the generation cache from the encoder
# layer count, so a decoder deeper than the encoder cannot generate even in stock T5)
VOCAB, D_MODEL, HEADS, D_KV, D_FF, ENC, DEC = 96, 64, 4, 16, 128, 4, 3
FAMILIES = ["t5", "t5_gated", "bart"]


# ------------------------------------------------------------------ models and inputs

def make_model(family: str) -> nn.Module:
    torch.manual_seed(0)
    if family == "bart":
        config = BartConfig(vocab_size=VOCAB, d_model=D_MODEL, encoder_layers=ENC, decoder_layers=DEC,
                            encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
                            encoder_ffn_dim=D_FF, decoder_ffn_dim=D_FF, max_position_embeddings=32,
                            dropout=0.0, scale_embedding=True)
        model = BartForConditionalGeneration(config)
    else:
        gated = family == "t5_gated"
        config = T5Config(vocab_size=VOCAB, d_model=D_MODEL, d_kv=D_KV, d_ff=D_FF, num_layers=ENC,
                          num_decoder_layers=DEC, num_heads=HEADS, dropout_rate=0.0, decoder_start_token_id=0,
                          feed_forward_proj="gated-gelu" if gated else "relu", tie_word_embeddings=not gated)
        model = T5ForConditionalGeneration(config)
        if gated:  # a v1.1 checkpoint has its own LM head (transformers 5 ties it unless both differ)
            model.lm_head.weight = nn.Parameter(torch.randn(VOCAB, D_MODEL) * 0.05)
            model.all_tied_weights_keys.pop("lm_head.weight", None)
    with torch.no_grad():  # perturb norms and biases away from their 1 / 0 init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def make_inputs(family: str) -> dict:
    g = torch.Generator().manual_seed(1)
    low = 3
    ids = torch.randint(low, VOCAB, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = torch.randint(low, VOCAB, (2, 6), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def logits(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


# ------------------------------------------------------------------ plans

def full_plan() -> PruningPlan:
    return PruningPlan.full(num_encoder_layers=ENC, num_decoder_layers=DEC, num_heads=HEADS,
                            encoder_ffn=D_FF, decoder_ffn=D_FF)


def special_plan() -> PruningPlan:
    """Zero-head and zero-FFN layers; encoder layer 0 keeps a subset, decoder layer 0 keeps none."""
    rng = random.Random(2)
    return PruningPlan(
        encoder_heads=[[0, 2], [], [1, 2, 3], [3]],
        decoder_self_heads=[[], [1, 3], [0, 1, 2, 3]],
        decoder_cross_heads=[[1], [], [0, 3]],
        encoder_ffn=[list(range(0, D_FF, 2)), [], list(range(50)), sorted(rng.sample(range(D_FF), 77))],
        decoder_ffn=[list(range(5, 15)), list(range(D_FF)), []],
        kept_decoder_layers=list(range(DEC)),
    )


def random_plan(seed: int) -> PruningPlan:
    rng = random.Random(seed)

    def subset(n: int) -> list[int]:
        return sorted(rng.sample(range(n), rng.randint(0, n)))

    return PruningPlan(
        encoder_heads=[subset(HEADS) for _ in range(ENC)],
        decoder_self_heads=[subset(HEADS) for _ in range(DEC)],
        decoder_cross_heads=[subset(HEADS) for _ in range(DEC)],
        encoder_ffn=[subset(D_FF) for _ in range(ENC)],
        decoder_ffn=[subset(D_FF) for _ in range(DEC)],
    )


def uniform_plan(family: str) -> PruningPlan:
    """Shapes a stock config holds: T5 same head sets per stack; BART all heads; uniform FFN."""
    rng = random.Random(3)
    plan = full_plan()
    plan.encoder_ffn = [sorted(rng.sample(range(D_FF), 64)) for _ in range(ENC)]
    plan.decoder_ffn = [sorted(rng.sample(range(D_FF), 64 if family != "bart" else 96)) for _ in range(DEC)]
    if family != "bart":
        plan.encoder_heads = [[0, 2] for _ in range(ENC)]
        plan.decoder_self_heads = [[1, 3] for _ in range(DEC)]
        plan.decoder_cross_heads = [sorted(rng.sample(range(HEADS), 2)) for _ in range(DEC)]
    return plan


def with_hidden(plan: PruningPlan, seed: int = 4) -> PruningPlan:
    plan = copy.deepcopy(plan)
    plan.hidden = sorted(random.Random(seed).sample(range(D_MODEL), 48))
    return plan


# ------------------------------------------------------------------ the masked reference

def _units(model: nn.Module, family: str):
    """(attention out-projection, kept heads, stack) and (FFN out-projection, kept dims) walkers."""
    if family == "bart":
        stacks = {"encoder": model.model.encoder.layers, "decoder": model.model.decoder.layers}
        attn = {"self": lambda b: b.self_attn.out_proj, "cross": lambda b: b.encoder_attn.out_proj}
        ffn = lambda b: b.fc2  # noqa: E731
    else:
        stacks = {"encoder": model.encoder.block, "decoder": model.decoder.block}
        attn = {"self": lambda b: b.layer[0].SelfAttention.o, "cross": lambda b: b.layer[1].EncDecAttention.o}
        ffn = lambda b: b.layer[-1].DenseReluDense.wo  # noqa: E731
    return stacks, attn, ffn


def masked_reference(model: nn.Module, plan: PruningPlan, family: str) -> nn.Module:
    ref = copy.deepcopy(model)
    head_dim = D_MODEL // HEADS if family == "bart" else D_KV
    stacks, attn, ffn = _units(ref, family)
    heads = {("encoder", "self"): plan.encoder_heads, ("decoder", "self"): plan.decoder_self_heads,
             ("decoder", "cross"): plan.decoder_cross_heads}
    with torch.no_grad():
        for (stack, kind), per_layer in heads.items():
            for block, kept in zip(stacks[stack], per_layer):
                out = attn[kind](block)
                for h in set(range(HEADS)) - set(kept):
                    out.weight[:, h * head_dim:(h + 1) * head_dim] = 0
                if not kept and out.bias is not None:
                    out.bias.zero_()
        for stack, per_layer in (("encoder", plan.encoder_ffn), ("decoder", plan.decoder_ffn)):
            for block, kept in zip(stacks[stack], per_layer):
                out = ffn(block)
                out.weight[:, sorted(set(range(D_FF)) - set(kept))] = 0
                if not kept and out.bias is not None:
                    out.bias.zero_()
    if plan.hidden is not None:
        _hook_hidden(ref, plan.hidden, family)
    return ref


def _hook_hidden(model: nn.Module, hidden: list[int], family: str) -> None:
    """Zero dropped hidden dims after embeddings and sublayers; norms over the kept dims only."""
    kept = torch.tensor(hidden)
    z = torch.zeros(D_MODEL)
    z[kept] = 1.0

    def zero_dropped(module, args, out):
        return out * z

    def kept_norm(module, args, out):
        x = args[0][..., kept]
        if isinstance(module, nn.LayerNorm):
            y = nn.functional.layer_norm(x, (len(hidden),), module.weight[kept], module.bias[kept],
                                         module.eps)
        else:  # T5LayerNorm (RMS, no bias)
            y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)
            y = y * module.weight[kept]
        full = torch.zeros_like(out)
        full[..., kept] = y
        return full

    stacks, attn, ffn = _units(model, family)
    if family == "bart":
        base = model.model
        embeds = [base.encoder.embed_tokens, base.decoder.embed_tokens,
                  base.encoder.embed_positions, base.decoder.embed_positions]
    else:
        embeds = [model.encoder.embed_tokens, model.decoder.embed_tokens]
    outs = [attn["self"](b) for b in list(stacks["encoder"]) + list(stacks["decoder"])]
    outs += [attn["cross"](b) for b in stacks["decoder"]]
    outs += [ffn(b) for b in list(stacks["encoder"]) + list(stacks["decoder"])]
    for module in embeds + outs:
        module.register_forward_hook(zero_dropped)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) or type(module).__name__ == "T5LayerNorm":
            module.register_forward_hook(kept_norm)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields tied tensors once


def check_pruned(model, plan, family):
    """Prune, compare logits with the masked reference and the parameter count with the plan's."""
    inputs = make_inputs(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune_model(model, plan)
    torch.testing.assert_close(logits(pruned, inputs), logits(masked_reference(model, plan, family), inputs))
    assert num_params(pruned) == num_params_from_plan(model.config, plan)
    assert num_params(pruned) < num_params(model) or plan == full_plan()
    for key, value in model.state_dict().items():  # the input model is untouched
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    return pruned, inputs


# ------------------------------------------------------------------ tests: parity

@pytest.mark.parametrize("family", FAMILIES)
def test_full_plan_is_identity(family):
    model = make_model(family)
    pruned, inputs = check_pruned(model, full_plan(), family)
    assert type(pruned) is type(model)
    torch.testing.assert_close(logits(pruned, inputs), logits(model, inputs))


@pytest.mark.parametrize("family", FAMILIES)
def test_special_plan_matches_masked(family):
    model = make_model(family)
    pruned, _ = check_pruned(model, special_plan(), family)
    assert is_remote(pruned)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", [10, 11])
def test_random_plan_matches_masked(family, seed):
    check_pruned(make_model(family), random_plan(seed), family)


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_plan_matches_masked(family):
    model = make_model(family)
    check_pruned(model, with_hidden(special_plan()), family)
    pruned, _ = check_pruned(model, with_hidden(uniform_plan(family)), family)
    assert pruned.config.d_model == 48
    assert is_remote(pruned) == (family == "bart")  # BART heads no longer span d_model


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_matches_masked(family):
    """Greedy decoding with the KV cache (zero-head layers update it with empty entries)."""
    model = make_model(family)
    plan = special_plan()
    pruned, ref = prune_model(model, plan), masked_reference(model, plan, family)
    inputs = make_inputs(family)
    kwargs = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=5,
                  min_new_tokens=5, do_sample=False, return_dict_in_generate=True, output_scores=True)
    a, b = pruned.generate(**kwargs), ref.generate(**kwargs)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(torch.stack(a.scores), torch.stack(b.scores))


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_plan_gives_stock_class(family):
    model = make_model(family)
    pruned, _ = check_pruned(model, uniform_plan(family), family)
    assert type(pruned) is type(model) and not is_remote(pruned)
    if family == "bart":
        assert (pruned.config.encoder_ffn_dim, pruned.config.decoder_ffn_dim) == (64, 96)
    else:
        assert (pruned.config.num_heads, pruned.config.d_ff) == (2, 64)


def test_gated_keeps_untied_head_and_relu_folds_scale():
    gated = prune_model(make_model("t5_gated"), with_hidden(special_plan()))
    assert gated.lm_head.weight is not gated.shared.weight
    assert gated.config.scale_decoder_outputs is False
    relu = prune_model(make_model("t5"), with_hidden(special_plan()))
    assert relu.lm_head.weight is relu.shared.weight and relu.config.scale_decoder_outputs is True
    for model in (gated, relu):
        assert model.encoder.embed_tokens.weight is model.shared.weight
        assert model.decoder.embed_tokens.weight is model.shared.weight
    bart = prune_model(make_model("bart"), with_hidden(special_plan()))
    assert bart.lm_head.weight is bart.model.shared.weight
    assert bart.model.encoder.embed_tokens.weight is bart.model.shared.weight


def test_prune_keeps_dtypes_and_mode():
    model = make_model("t5_gated").to(torch.bfloat16)
    model.encoder.block[0].layer[-1].DenseReluDense.wo.float()  # T5 keeps wo in fp32
    model.train()
    pruned = prune_model(model, special_plan())
    assert pruned.training
    assert pruned.encoder.block[0].layer[-1].DenseReluDense.wo.weight.dtype == torch.float32
    assert pruned.encoder.block[2].layer[-1].DenseReluDense.wo.weight.dtype == torch.bfloat16
    assert pruned.shared.weight.dtype == torch.bfloat16
    assert logits(pruned.eval(), make_inputs("t5_gated")).dtype == torch.bfloat16


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_removed_sublayers_hold_no_parameters(family):
    """Zero-element parameters break ZeRO-3: removed sublayers hold none (EmptyLinear)."""
    pruned = prune_model(make_model(family), special_plan())
    assert all(p.numel() > 0 for p in pruned.parameters())
    empty = [m for m in pruned.modules() if type(m).__name__ == "EmptyLinear"]
    # special plan: 1 + 1 + 1 removed attentions (4 Linears each), 1 + 1 removed FFNs (2 each)
    assert len(empty) == 3 * 4 + 2 * 2


def test_plan_validation_errors():
    config = make_model("t5").config
    bad = special_plan()
    bad.encoder_heads = bad.encoder_heads[:-1]
    with pytest.raises(ValueError, match="encoder_heads has 3 layers"):
        validate_plan(config, bad)
    bad = special_plan()
    bad.decoder_ffn[0] = [3, 1]
    with pytest.raises(ValueError, match="strictly increasing"):
        validate_plan(config, bad)
    bad = special_plan()
    bad.decoder_cross_heads[1] = [4]
    with pytest.raises(ValueError, match="outside"):
        validate_plan(config, bad)
    bad = with_hidden(special_plan())
    bad.hidden = [D_MODEL]
    with pytest.raises(ValueError, match="plan.hidden"):
        validate_plan(config, bad)


# ------------------------------------------------------------------ tests: export

def _tiny_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")


def _saved_keys(out_dir) -> set[str]:
    keys = set()
    for path in out_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            keys |= set(f.keys())
    return keys


class _Wrapper(nn.Module):
    """Stands in for a DeepSpeed engine (``.module``) around a compiled model (``._orig_mod``)."""

    def __init__(self, inner: nn.Module, attr: str):
        super().__init__()
        setattr(self, attr, inner)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("plan_kind", ["special", "uniform"])
def test_export_roundtrip(tmp_path, family, plan_kind):
    model = make_model(family)
    plan = with_hidden(special_plan()) if plan_kind == "special" else uniform_plan(family)
    pruned = prune_model(model, plan)
    inputs = make_inputs(family)
    expected = logits(pruned, inputs)
    wrapped = _Wrapper(_Wrapper(pruned, "_orig_mod"), "module")
    out = save_hf_dir(wrapped, _tiny_tokenizer(), tmp_path / "model",
                      extra_files={"notes/plan.json": plan.to_json(), "blob.bin": b"\x00\x01"})
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "blob.bin"} <= files
    assert json.loads((out / "notes" / "plan.json").read_text()) == plan.to_dict()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    config = json.loads((out / "config.json").read_text())
    remote = plan_kind == "special"
    assert ("auto_map" in config) == remote

    # state-dict key names: exactly the model's own names, no wrapper prefixes, tied tensors once
    keys = _saved_keys(out)
    assert keys <= set(pruned.state_dict())
    assert not any(k.startswith(("module.", "_orig_mod.")) or "._orig_mod." in k for k in keys)
    embed = "shared.weight" if family != "bart" else "model.shared.weight"
    assert embed in keys and ("lm_head.weight" in keys) == (family == "t5_gated")
    assert not any(k.endswith("embed_tokens.weight") for k in keys)

    if remote:
        name = "bart" if family == "bart" else "t5"
        code = {f"modeling_nash_{name}.py", f"configuration_nash_{name}.py", "modeling_nash_utils.py"}
        assert code <= files
        assert config["model_type"] in CONFIG_MAPPING  # the stock type: AutoTokenizer needs no remote code
        with pytest.raises(RuntimeError, match="mismatch"):  # the stock class refuses the per-layer widths
            AutoModelForSeq2SeqLM.from_pretrained(out, trust_remote_code=False)
    loaded, info = AutoModelForSeq2SeqLM.from_pretrained(out, trust_remote_code=remote,
                                                         output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert (type(loaded) is type(model)) == (not remote)
    assert type(loaded).__name__ == type(pruned).__name__
    loaded.eval()
    torch.testing.assert_close(logits(loaded, inputs), expected)
    generated = loaded.generate(inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                max_new_tokens=4, do_sample=False)
    assert generated.shape[0] == 2


def test_export_dtype_casts_a_copy(tmp_path):
    pruned = prune_model(make_model("t5"), special_plan())
    out = save_hf_dir(pruned, None, tmp_path / "bf16", dtype="bfloat16")
    assert pruned.dtype == torch.float32
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("shared.weight").dtype == torch.bfloat16
        wo = "encoder.block.0.layer.1.DenseReluDense.wo.weight"
        torch.testing.assert_close(f.get_tensor(wo), pruned.state_dict()[wo], rtol=0, atol=0)  # fp32
    loaded = AutoModelForSeq2SeqLM.from_pretrained(out, trust_remote_code=True, dtype=torch.bfloat16)
    assert loaded.shared.weight.dtype == torch.bfloat16


def test_save_refuses_existing_dir(tmp_path):
    pruned = prune_model(make_model("bart"), uniform_plan("bart"))
    out = tmp_path / "model"
    save_hf_dir(pruned, None, out)
    with pytest.raises(ValueError, match=r"model.*overwrite"):
        save_hf_dir(pruned, None, out)
    (out / "stale.txt").write_text("old")
    save_hf_dir(pruned, None, out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_dir_cleans_up_on_error(tmp_path):
    out = tmp_path / "finalize" / "model"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "partial.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert not out.exists() and list(out.parent.iterdir()) == []
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("a")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "a"
    with pytest.raises(ValueError, match="overwrite"):
        with atomic_dir(out):
            pass
    with pytest.raises(ValueError, match="relative path"):
        save_hf_dir(prune_model(make_model("t5"), full_plan()), None, tmp_path / "x",
                    extra_files={"../evil": "x"})
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ tests: against nash_ds.masks

@pytest.mark.parametrize("family", FAMILIES)
def test_matches_cofi_masks(family):
    """0/1 CoFi masks (via nash_ds.masks hooks) that encode a plan give the pruned model's logits."""
    masks = pytest.importorskip("nash_ds.masks")
    from nash_ds.models import family_for

    model = make_model(family)
    plan = with_hidden(special_plan())
    fam = family_for(model)
    maskset = masks.MaskSet(fam, model.config, method="cofi").eval()
    kept = {"encoder_heads": plan.encoder_heads, "decoder_self_heads": plan.decoder_self_heads,
            "decoder_cross_heads": plan.decoder_cross_heads, "encoder_ffn": plan.encoder_ffn,
            "decoder_ffn": plan.decoder_ffn, "hidden": [plan.hidden]}
    with torch.no_grad():
        for name, gate in maskset.gates.items():  # log_alpha +10 keeps a unit, -10 drops it
            rows = kept.get(name)
            if rows is None:  # whole-sublayer gates stay open
                gate.log_alpha.fill_(10.0)
                continue
            gate.log_alpha.fill_(-10.0)
            for r, units in enumerate(rows):
                gate.log_alpha[r, units] = 10.0
    assert maskset.plan(list(range(DEC))) == plan
    inputs = make_inputs(family)
    masked = copy.deepcopy(model)
    handle = masks.attach(masked, fam, maskset)
    maskset()
    expected = logits(masked, inputs)
    handle.remove()
    torch.testing.assert_close(logits(prune_model(model, plan), inputs), expected)


def test_finalizer_layout_in_one_published_dir(tmp_path):
    """finalize/ = model/ + pruning_report.json, published together."""
    plan = special_plan()
    out = tmp_path / "finalize"
    with atomic_dir(out) as tmp:
        save_hf_dir(prune_model(make_model("t5"), plan), None, tmp / "model")
        (tmp / "pruning_report.json").write_text(json.dumps({"plan": plan.to_dict()}))
        assert not out.exists()
    assert sorted(p.name for p in out.iterdir()) == ["model", "pruning_report.json"]
    assert (out / "model" / "config.json").is_file()


@pytest.mark.parametrize("family", FAMILIES)
def test_family_counts_pruned_model(family):
    """The family's count of prunable params on the pruned model equals its formula for the plan."""
    models = pytest.importorskip("nash_ds.models")
    model = make_model(family)
    fam = models.family_for(model)
    plan = with_hidden(special_plan())
    counted = prunable(prune_model(model, plan))
    sites = {"encoder": [plan.encoder_heads], "decoder": [plan.decoder_self_heads, plan.decoder_cross_heads]}
    ffns = {"encoder": plan.encoder_ffn, "decoder": plan.decoder_ffn}
    d = len(plan.hidden)
    for stack in ("encoder", "decoder"):
        expected = sum(fam.attn_params(model.config, stack, num_heads=len(h), nonempty=int(bool(h)), hidden=d)
                       for heads in sites[stack] for h in heads)
        expected += sum(fam.ffn_params(model.config, stack, num_dims=len(f), nonempty=int(bool(f)), hidden=d)
                        for f in ffns[stack])
        assert counted[stack] == expected
