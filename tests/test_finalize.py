"""Finalizer core, in process: masked model == pruned model == exported-and-reloaded model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from nash_ds.export import save_hf_dir
from nash_ds.errors import SelfCheckError
from nash_ds.masks import Masking, MaskSet
from nash_ds.models import count_params, family_for, load_full_state
from nash_ds.stages.finalize import build_report, pruned_from_masks, self_check
from tests.conftest import prunable, tiny_batch, tiny_model


def _random_masks(family, student, teacher, method: str, seed: int) -> MaskSet:
    masks = MaskSet(family, student.config, method=method, teacher_config=teacher.config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in masks.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 3.0)  # spread: some units dropped, some kept
    return masks


def _finalized(preset: str, method: str, kept: list[int], seed: int = 0, dtype: torch.dtype = torch.float32):
    teacher = tiny_model(preset, seed=seed)
    family = family_for(teacher)
    student = family.make_student(teacher, kept).eval().to(dtype)
    masks = _random_masks(family, student, teacher, method, seed)
    pruned, plan = pruned_from_masks(student, masking=Masking(family, student.config, masks), kept=kept)
    return teacher, family, student, masks, pruned, plan


@pytest.mark.parametrize("method", ["nash", "cofi"])
def test_export_loaded_with_from_pretrained_matches_masked_model(tmp_path, preset, method):
    kept = [0, 3] if method == "nash" else [0, 1, 2, 3]
    teacher, family, masked, masks, pruned, plan = _finalized(preset, method, kept)
    batches = [tiny_batch(seed=s) for s in range(3)]
    assert self_check(masked, pruned, batches, atol=1e-4)["max_abs_logit_diff"] <= 1e-4
    save_hf_dir(pruned, None, tmp_path / "model")
    trust = type(pruned).__module__.startswith("nash_ds.models.remote")
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "model", trust_remote_code=trust).eval()
    with torch.no_grad():
        for batch in batches:
            torch.testing.assert_close(loaded(**batch).logits, masked(**batch).logits, atol=1e-4, rtol=1e-4)
    # something was really removed
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in masked.parameters())


def test_t5_selection_that_drops_layer_0_still_matches(tmp_path):
    teacher, family, masked, masks, pruned, plan = _finalized("tiny-t5", "nash", [1, 3], seed=1)
    assert plan.kept_decoder_layers == [1, 3]
    batches = [tiny_batch(seed=s) for s in range(2)]
    self_check(masked, pruned, batches, atol=1e-4)
    save_hf_dir(pruned, None, tmp_path / "m")
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "m", trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batches[0]).logits, masked(**batches[0]).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["nash", "cofi"])
def test_export_param_count_equals_report_and_mask_expectation(preset, method):
    kept = [0, 2] if method == "nash" else [0, 1, 2, 3]
    teacher, family, masked, masks, pruned, plan = _finalized(preset, method, kept, seed=2)
    report = build_report(family=family, plan=plan, pruned=pruned, teacher_params=count_params(teacher, family),
                          masking=Masking(family, masked.config, masks),
                          meta={"method": method, "label": method, "distill": True, "deterministic": "global",
                                "family": family.name, "teacher": "t", "latency": None}, tag="step-1",
                          check={"max_abs_logit_diff": 0.0}, atol=1e-4, student_config=masked.config)
    counted = prunable(pruned)
    assert report["params"]["pruned"]["total"] == sum(p.numel() for p in pruned.parameters())
    for part in ("encoder", "decoder", "model"):
        assert report["params"]["pruned"][f"prunable_{part}"] == counted[part]
        assert report["mask_expected_prunable_params"][part] == counted[part]
    assert report["kept_decoder_layers"] == kept
    teacher_total = sum(p.numel() for p in teacher.parameters())  # each tensor once, an untied head apart
    sparsity = report["sparsity_vs_teacher"]
    assert sparsity["total_params"] == pytest.approx(1 - report["params"]["pruned"]["total"] / teacher_total, abs=1e-12)
    assert sparsity["model"] == pytest.approx(1 - counted["model"] / prunable(teacher)["model"], abs=1e-12)
    if method == "nash":  # the decoder is only cut: 2 of 4 layers at full width
        assert sparsity["decoder"] == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("name", ["tiny-t5", "tiny-t5-v1_1", "tiny-bart", "tiny-mt5", "tiny-mbart"])
def test_keep_all_plan_reports_zero_sparsity_with_tied_or_untied_heads(name):
    teacher = tiny_model(name)
    family = family_for(teacher)
    student = family.make_student(teacher, [0, 1, 2, 3]).eval()
    masking = Masking(family, student.config, None)  # sft: the plan keeps everything
    pruned, plan = pruned_from_masks(student, masking=masking, kept=[0, 1, 2, 3])
    report = build_report(family=family, plan=plan, pruned=pruned, teacher_params=count_params(teacher, family),
                          masking=masking, meta={"method": "sft", "label": "sft", "distill": False,
                                "deterministic": "global", "family": family.name, "teacher": "t", "latency": None},
                          tag="step-1", check={"max_abs_logit_diff": 0.0}, atol=1e-4, student_config=student.config)
    assert report["sparsity_vs_teacher"] == {"encoder": 0.0, "decoder": 0.0, "model": 0.0, "total_params": 0.0}


@pytest.mark.parametrize("method", ["nash", "cofi"])
def test_pruned_equals_masked_in_float64(preset, method):
    """What the float32 self-check's tolerance covers is rounding alone: masked and pruned in float64 agree up to
    float64 rounding (the G2P NASH models: up to 6.5e-4 apart in float32, 2e-11 in float64). CoFi's hidden-dim mask
    recomputes every norm over the kept dims in float32, as the stock norms compute theirs (``masked_norm``): its
    pair then agrees to float32 rounding of the norms alone (1.5e-7 of the largest logit here)."""
    kept = [0, 3] if method == "nash" else [0, 1, 2, 3]
    _, _, masked, _, pruned, _ = _finalized(preset, method, kept, seed=3, dtype=torch.float64)
    with torch.no_grad():
        for batch in [tiny_batch(seed=s) for s in range(2)]:
            ref = masked(**batch).logits
            assert ref.dtype == torch.float64
            bound = (1e-10 if method == "nash" else 1e-6) * max(1.0, float(ref.abs().max()))
            assert float((ref - pruned(**batch).logits).abs().max()) <= bound


def test_self_check_tolerance_grows_with_the_logits():
    """atol + rtol x the largest masked logit: logits 1000 times larger (an untied head scaled in both models) get a
    tolerance 1000 times larger in its rtol part, and a model that computes something else is still refused."""
    _, _, masked, _, pruned, _ = _finalized("tiny-t5-v1_1", "nash", [0, 3])
    batches = [tiny_batch(seed=s) for s in range(2)]
    head = pruned.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone())  # the pruned model's own head, whatever it shares
    small = self_check(masked, pruned, batches, atol=1e-4, rtol=1e-3)
    with torch.no_grad():
        for model in (masked, pruned):
            model.get_output_embeddings().weight.mul_(1000.0)
    large = self_check(masked, pruned, batches, atol=1e-4, rtol=1e-3)
    assert large["max_abs_logit"] == pytest.approx(1000 * small["max_abs_logit"], rel=1e-4)
    assert large["tolerance"] == pytest.approx(1e-4 + 1e-3 * large["max_abs_logit"])
    assert large["max_abs_logit_diff"] <= large["tolerance"]
    with torch.no_grad():
        pruned.get_output_embeddings().weight[:, :4].mul_(1.05)  # 5% off in a few hidden dims: far above rounding
    with pytest.raises(SelfCheckError, match=r"finalize.rtol=0.001 x max \|logit\|"):
        self_check(masked, pruned, batches, atol=1e-4, rtol=1e-3)


def test_self_check_refuses_a_model_that_computes_something_else():
    teacher, family, masked, masks, pruned, plan = _finalized("tiny-t5", "nash", [0, 3])
    with torch.no_grad():
        next(pruned.parameters()).add_(0.5)
    with pytest.raises(SelfCheckError, match="self-check failed"):
        self_check(masked, pruned, [tiny_batch()], atol=1e-4, rtol=1e-3)  # the defaults


def test_consolidated_state_keeps_an_untied_lm_head():
    model = tiny_model("tiny-t5-v1_1")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert not torch.equal(state["lm_head.weight"], state["shared.weight"])
    with torch.device("meta"):
        rebuilt = type(model)(model.config)
    load_full_state(rebuilt, state)
    rebuilt.eval()
    assert rebuilt.lm_head.weight is not rebuilt.shared.weight
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_reloaded_export_is_checked_in_its_dtype(tmp_path, dtype):
    from safetensors.torch import load_file, save_file

    from nash_ds.export import cast_for_export
    from nash_ds.stages.finalize import check_export, park_logits

    _, _, masked, _, pruned, _ = _finalized("tiny-t5", "nash", [0, 3])
    batches = [tiny_batch(seed=s) for s in range(2)]
    parked = park_logits(masked, batches, tmp_path)
    save_hf_dir(cast_for_export(pruned, dtype), None, tmp_path / "model")
    result = check_export(tmp_path / "model", parked, batches, dtype=dtype, atol=1e-4)
    assert result["dtype"] == str(dtype).removeprefix("torch.")
    assert result["max_abs_logit_diff"] <= result["tolerance"]
    if dtype == torch.float32:
        assert result["tolerance"] == 1e-4
    else:
        assert 1e-4 < result["tolerance"] < 0.5 * max(float(p.abs().max()) for p in map(torch.load, parked))
    # a file that lost what the model computes (one projection zeroed) is refused, whatever the dtype
    weights = load_file(tmp_path / "model" / "model.safetensors")
    name = next(k for k in weights if k.endswith("DenseReluDense.wo.weight"))
    weights[name] = torch.zeros_like(weights[name])
    save_file(weights, tmp_path / "model" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SelfCheckError, match="reloaded from disk differs"):
        check_export(tmp_path / "model", parked, batches, dtype=dtype, atol=1e-4)
