"""The method as specified (clamped log_alpha, CE-only SFT, gradient checkpointing, a final fine-tune
that cannot lose) and every accepted family end to end, on real DeepSpeed ranks."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import FAST, TINY, load_weights, run_nash, scalars

pytestmark = pytest.mark.slow

STEPS = ["train.eval_every=0", "train.micro_batch_size=2", "train.warmup_steps=0", "prune.sparsity_warmup_steps=2",
         "data.max_eval_samples=4", "generation.max_new_tokens=4", *FAST]


def _teacher(tmp_path_factory, preset: str):
    from transformers import AutoTokenizer

    from nash_ds.demo import DEMO_TOKENIZER
    from nash_ds.models import load_model
    from nash_ds.stages.common import model_kwargs_from_tokenizer

    d = tmp_path_factory.mktemp(preset) / "model"
    tok = AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    load_model(f"preset:{preset}", seed=5, **model_kwargs_from_tokenizer(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def t5_teacher(tmp_path_factory):
    return _teacher(tmp_path_factory, "tiny-t5")


@pytest.mark.parametrize("method,zero,ranks", [("nash", 0, 1), ("nash", 2, 2), ("nash", 3, 2), ("cofi", 3, 2)])
def test_log_alpha_stays_in_cofis_range_after_a_huge_mask_step(t5_teacher, tmp_path, zero, ranks, method):
    """mask_lr=50 moves every log_alpha by about 50 in one Adam step; the clamp must hold on the fp32
    masters the checkpoint stores (and so in the export), under every ZeRO stage."""
    from nash_ds.checkpoint import consolidate, newest_complete

    out = tmp_path / "run"
    run_nash("prune", f"output_dir={out}", f"prune.teacher={t5_teacher}", f"prune.method={method}",
             f"train.ds_config=ds_configs/zero{zero}_fp32.json", "train.max_steps=1", "prune.mask_lr=50",
             *STEPS, ranks=ranks)
    ckpt_dir = out / "prune" / "checkpoints"
    state = consolidate(ckpt_dir, newest_complete(ckpt_dir), keep=lambda name: name.startswith("masks."))
    exported = load_file(str(out / "prune" / "model" / "masks.safetensors"))
    lo, hi = math.log(1e-2), math.log(1e2)
    assert state and exported
    for values in (state, exported):
        for name, v in values.items():
            assert v.min() >= lo - 1e-6 and v.max() <= hi + 1e-6, (name, v.min().item(), v.max().item())
    every = torch.cat([v.flatten() for v in state.values()])
    assert ((every - lo).abs() < 1e-5).any() or ((every - hi).abs() < 1e-5).any()  # the step hit a bound


def test_sft_is_cross_entropy_only_unless_distillation_is_asked_for(t5_teacher, tmp_path):
    import json

    for extra, label in (([], "sft"), (["prune.sft_distill=true"], "sft+kd")):
        out = tmp_path / label.replace("+", "_")
        run_nash("prune", f"output_dir={out}", f"prune.teacher={t5_teacher}", "prune.method=sft",
                 "train.ds_config=ds_configs/zero0_fp32.json", "train.max_steps=3", *extra, *STEPS)
        tb = out / "prune" / "tensorboard"
        ce = [v for _, v in scalars(tb, "prune/ce")]
        assert len(ce) == 3 and all(v > 0 for v in ce)
        if label == "sft":
            with pytest.raises(KeyError):
                scalars(tb, "prune/kd")
            with pytest.raises(KeyError):
                scalars(tb, "prune/hidden")
            torch.testing.assert_close([v for _, v in scalars(tb, "prune/loss")], ce)  # the loss is the CE alone
        else:
            assert all(v > 0 for _, v in scalars(tb, "prune/kd"))
            assert all(v > 0 for _, v in scalars(tb, "prune/hidden"))
        run_nash("finalize", f"output_dir={out}", "prune.method=sft", *FAST)
        report = json.loads((out / "finalize" / "pruning_report.json").read_text())
        assert report["label"] == label and report["distill"] == (label == "sft+kd")


def test_prune_honours_gradient_checkpointing_and_computes_the_same(t5_teacher, tmp_path):
    runs = {}
    for gc in (False, True):
        out = tmp_path / f"gc{int(gc)}"
        r = run_nash("prune", f"output_dir={out}", f"prune.teacher={t5_teacher}", "train.max_steps=3",
                     f"train.gradient_checkpointing={str(gc).lower()}", "train.ds_config=ds_configs/zero0_fp32.json",
                     *STEPS)
        assert ("gradient checkpointing on" in r.stderr) == gc
        runs[gc] = out
    for part in ("student",):
        a, b = load_weights(runs[False] / "prune" / "model" / part), load_weights(runs[True] / "prune" / "model" / part)
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-5, msg=k)
    a = load_file(str(runs[False] / "prune" / "model" / "masks.safetensors"))
    b = load_file(str(runs[True] / "prune" / "model" / "masks.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-5, msg=k)


def test_a_final_fine_tune_that_only_hurts_publishes_its_starting_model(tmp_path):
    """eval_at_start: the starting model competes for best; with an lr that wrecks the model, the published
    model is exactly the one it started from, and its metric is the best one seen. (The validation loss is
    the metric here: a weak start's ROUGE can lose to a wrecked model's lucky words; its loss cannot.)"""
    out = tmp_path / "demo"
    run_nash("finetune", f"output_dir={out}", TINY, "train.max_steps=30", "train.eval_every=0",
             "train.ds_config=ds_configs/zero0_fp32.json", *FAST)
    start = out / "finetune" / "model"
    final = tmp_path / "final"
    run_nash("finetune", f"output_dir={final}", f"model.name_or_path={start}", "train.eval_at_start=true",
             "train.lr=5.0", "train.warmup_steps=0", "train.max_steps=4", "train.eval_every=2",
             "train.metric_for_best=loss", "train.greater_is_better=false",
             "train.ds_config=ds_configs/zero0_fp32.json", *FAST)
    before, after = load_weights(start), load_weights(final / "finetune" / "model")
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    loss = dict(scalars(final / "finetune" / "tensorboard", "eval/loss"))
    assert sorted(loss) == [0, 2, 4]
    assert loss[0] < min(loss[2], loss[4])  # training hurt: the start stayed best, and was published


@pytest.mark.parametrize("preset", ["tiny-mt5", "tiny-mbart"])
def test_mt5_and_mbart_prune_and_finalize_under_zero3_on_two_ranks(tmp_path_factory, tmp_path, preset):
    from transformers import AutoModelForSeq2SeqLM

    from nash_ds.masks import Masking
    from nash_ds.models import family_for

    teacher = _teacher(tmp_path_factory, preset)
    out = tmp_path / "run"
    r = run_nash("prune", f"output_dir={out}", f"prune.teacher={teacher}", f"model.name_or_path={teacher}",
                 "train.ds_config=ds_configs/zero3_fp32.json",
                 "train.max_steps=3", *STEPS, ranks=2)
    assert "built partitioned (ZeRO-3)" in r.stderr
    run_nash("finalize", f"output_dir={out}", *FAST)
    exported = AutoModelForSeq2SeqLM.from_pretrained(out / "finalize" / "model", trust_remote_code=True).eval()
    student = AutoModelForSeq2SeqLM.from_pretrained(out / "prune" / "model" / "student").eval()
    t = AutoModelForSeq2SeqLM.from_pretrained(teacher)
    family = family_for(student)
    masking = Masking.build(family, student.config, method="nash", droprate_init=0.5, teacher_config=t.config,
                            mask_state=load_file(str(out / "prune" / "model" / "masks.safetensors")))
    masking.finalize(student, [0, 3])  # the student becomes the masked model
    ids = torch.tensor([[5, 9, 17, 23, 1], [7, 8, 1, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(), "decoder_input_ids": ids[:, :4]}
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, student(**batch).logits, atol=1e-4, rtol=1e-4)
    # the decoder cut, heads and FFN dims really removed
    assert family.num_layers(exported.config, "decoder") == 2
    heads = [len(h) for h in exported.config.nash_encoder_heads] if hasattr(exported.config, "nash_encoder_heads") \
        else exported.config.nash_encoder_num_heads
    assert sum(heads) < 4 * family.num_heads(t.config, "encoder")
    assert sum(exported.config.nash_encoder_ffn) < 4 * family.d_ff(t.config, "encoder")
    assert sum(p.numel() for p in exported.parameters()) < sum(p.numel() for p in student.parameters())
    # cached generation == uncached
    with torch.no_grad():
        kw = dict(input_ids=ids, attention_mask=(ids != 0).long(), max_new_tokens=6, do_sample=False, num_beams=1)
        assert torch.equal(exported.generate(**kw, use_cache=True), exported.generate(**kw, use_cache=False))
