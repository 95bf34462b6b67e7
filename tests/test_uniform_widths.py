"""prune.uniform_widths: one count per mask type in every layer, a stock-class export that equals the masked model."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM

from nash_ds.export import save_hf_dir
from nash_ds.masks import Masking, MaskSet, deterministic_gates
from nash_ds.models import count_params, family_for
from nash_ds.models.pruning import export_shape, is_remote
from nash_ds.stages.finalize import build_report, pruned_from_masks, self_check
from tests.conftest import tiny_batch, tiny_model


def _uniform(preset: str, method: str, kept: list[int], seed: int = 0):
    teacher = tiny_model(preset, seed=seed)
    family = family_for(teacher)
    student = family.make_student(teacher, kept).eval()
    masks = MaskSet(family, student.config, method=method, teacher_config=teacher.config, uniform=True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in masks.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 3.0)
    masking = Masking(family, student.config, masks)
    pruned, plan = pruned_from_masks(student, masking=masking, kept=kept)
    return teacher, family, student, masking, pruned, plan


def test_uniform_rules_keep_one_count_per_row():
    la = torch.tensor([[8.0, -8.0, 7.0, -7.0], [-8.0, 8.0, -7.0, 7.0], [8.0, 7.0, -8.0, -7.0]])
    own = deterministic_gates(la, rule="uniform")
    assert own.sum(dim=1).tolist() == [2.0, 2.0, 2.0]
    assert own.tolist() == [[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0]]  # each row its own best
    shared = deterministic_gates(la, rule="uniform_shared")
    assert all(torch.equal(shared[0], row) for row in shared)  # one set for every row
    assert shared.sum(dim=1).tolist() == [2.0, 2.0, 2.0]
    # never a row with nothing left
    assert deterministic_gates(torch.full((2, 4), -20.0), rule="uniform").sum(dim=1).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("method", ["nash", "cofi"])
def test_uniform_export_is_the_stock_class_and_equals_the_masked_model(tmp_path, preset, method):
    kept = [0, 3] if method == "nash" else [0, 1, 2, 3]
    teacher, family, masked, masking, pruned, plan = _uniform(preset, method, kept)
    for site in ("encoder_heads", "decoder_self_heads", "decoder_cross_heads", "encoder_ffn", "decoder_ffn"):
        assert len({len(u) for u in getattr(plan, site)}) == 1, site
    if family.shared_head_positions:  # T5: one self-attention head set per stack
        assert all(h == plan.encoder_heads[0] for h in plan.encoder_heads)
        assert all(h == plan.decoder_self_heads[0] for h in plan.decoder_self_heads)
    shape = export_shape(masked.config, plan)
    bart_hidden = method == "cofi" and family.name in ("bart", "mbart")  # LayerNorm: hidden dims cannot be padded
    assert shape["shape"] == ("per_layer" if bart_hidden else "stock")
    if bart_hidden:
        assert is_remote(pruned)
        return
    assert not is_remote(pruned) and type(pruned) is type(teacher)
    batches = [tiny_batch(seed=s) for s in range(3)]
    assert self_check(masked, pruned, batches, atol=1e-4)["max_abs_logit_diff"] <= 1e-4
    save_hf_dir(pruned, None, tmp_path / "model")
    assert AutoConfig.from_pretrained(tmp_path / "model").architectures == shape["architectures"]
    with warnings.catch_warnings(record=True) as caught, _captured("transformers") as logged:
        warnings.simplefilter("always")
        loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "model").eval()  # no trust_remote_code
    assert not [w for w in caught if "nash" in str(w.message).lower() or "size" in str(w.message).lower()]
    # transformers 5.24 says this of every untied T5 v1.1 / mT5 checkpoint, hub ones included (T5Config forces
    # tie_word_embeddings=True): not ours to silence
    upstream = "specifies to tie shared.weight to lm_head.weight"
    assert not [r for r in logged if r.levelno >= logging.WARNING and upstream not in r.getMessage()], \
        [r.getMessage() for r in logged]
    assert type(loaded).__module__.startswith("transformers.")
    with torch.no_grad():
        for batch in batches:
            torch.testing.assert_close(loaded(**batch).logits, masked(**batch).logits, atol=1e-4, rtol=1e-4)
    report = build_report(family=family, plan=plan, pruned=pruned, teacher_params=count_params(teacher, family),
                          masking=masking, meta={"method": method, "label": method, "distill": True,
                                                 "deterministic": "global", "family": family.name, "teacher": "t",
                                                 "latency": None}, tag="step-1", check={"max_abs_logit_diff": 0.0}, atol=1e-4,
                          student_config=masked.config)
    assert report["export_shape"]["shape"] == "stock" and report["export_shape"]["uniform_widths"]


def test_t5_nash_uniform_pads_the_encoder_and_bart_prunes_its_ffn():
    """T5Config has one head count and d_ff for both stacks: NASH's narrower encoder is kept as zeros; BART's
    per-stack FFN widths are really cut (its heads are padded: head_dim = d_model / heads)."""
    *_, pruned, plan = _uniform("tiny-t5", "nash", [0, 3])
    assert pruned.config.num_heads == 4 and pruned.config.d_ff == 128
    assert len(plan.encoder_ffn[0]) < 128 and len(plan.encoder_heads[0]) < 4  # ... though the masks cut them
    *_, bpruned, bplan = _uniform("tiny-bart", "nash", [0, 3])
    assert bpruned.config.encoder_ffn_dim == len(bplan.encoder_ffn[0]) < 128


def test_uniform_expected_size_matches_the_pruned_shape(preset):
    _, family, masked, masking, _, plan = _uniform(preset, "nash", [0, 3], seed=3)
    det = masking.maskset.deterministic_params()
    enc_heads = len(plan.encoder_heads[0])
    enc_ffn = len(plan.encoder_ffn[0])
    c = masked.config
    d = family.d_model(c)
    layers = family.num_layers(c, "encoder")
    want = layers * (family.attn_params(c, "encoder", num_heads=enc_heads, nonempty=1, hidden=d)
                     + family.ffn_params(c, "encoder", num_dims=enc_ffn, nonempty=1, hidden=d))
    assert det["encoder"] == pytest.approx(want)


class _captured:
    """Collect the records of one logger (transformers' own handler may not propagate)."""

    def __init__(self, name: str):
        self.logger, self.records = logging.getLogger(name), []

    def __enter__(self):
        self.handler = logging.Handler()
        self.handler.emit = self.records.append
        self.logger.addHandler(self.handler)
        return self.records

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
