"""The prune stage on real DeepSpeed ranks, and the finalize stage on its checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import FAST, TINY, load_weights, run_nash, scalars

pytestmark = pytest.mark.slow

SHORT = ["train.max_steps=5", "train.eval_every=0", "train.micro_batch_size=1", "train.warmup_steps=0",
         "prune.sparsity_warmup_steps=3", "prune.mask_lr=0.05", "prune.lambda_lr=0.05", "data.max_eval_samples=4",
         "generation.max_new_tokens=4", *FAST]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny T5 'fine-tuned' teacher as an HF directory with the demo tokenizer (random weights)."""
    from transformers import AutoTokenizer

    from nash_ds.demo import DEMO_TOKENIZER
    from nash_ds.models import load_model
    from nash_ds.stages.common import model_kwargs_from_tokenizer

    d = tmp_path_factory.mktemp("teacher") / "model"
    tok = AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    model = load_model("preset:tiny-t5", seed=3, **model_kwargs_from_tokenizer(tok))
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def zero_runs(teacher_dir, tmp_path_factory):
    """The same short NASH run under ZeRO-3 (2 ranks), ZeRO-2 (2 ranks) and ZeRO-0 (1 rank x 2 accumulated)."""
    root = tmp_path_factory.mktemp("zero")
    runs = {}
    for name, ranks, zero, accum in (("z3", 2, 3, 1), ("z2", 2, 2, 1), ("z0", 1, 0, 2)):
        out = root / name
        r = run_nash("prune", f"output_dir={out}", f"prune.teacher={teacher_dir}",
                     f"model.name_or_path={teacher_dir}", f"train.ds_config=ds_configs/zero{zero}_fp32.json",
                     f"train.grad_accum={accum}", *SHORT, ranks=ranks)
        (out / "launcher.log").write_text(r.stdout + r.stderr)
        runs[name] = out
    return runs


def _log_alphas(out):
    return load_file(str(out / "prune" / "model" / "masks.safetensors"))


def test_log_alphas_agree_across_zero_stages_and_world_sizes(zero_runs):
    ref = _log_alphas(zero_runs["z0"])
    init = None
    for name in ("z3", "z2"):
        other = _log_alphas(zero_runs[name])
        assert other.keys() == ref.keys()
        for k in ref:
            # stated tolerance: fp32 reductions in another order over 5 Adam steps
            torch.testing.assert_close(other[k], ref[k], atol=1e-4, rtol=1e-4, msg=f"{name}:{k}")
    # and they did move: training changed the masks (init is N(mu, 0.01) with mu = 0 here)
    init = max(v.abs().max().item() for v in ref.values())
    assert init > 0.1
    # ZeRO-3 built teacher and student partitioned (no rank held either whole), the others copied the
    # teacher: the trained students agree all the same
    assert "built partitioned (ZeRO-3)" in (zero_runs["z3"] / "launcher.log").read_text()
    assert "copied from the teacher" in (zero_runs["z2"] / "launcher.log").read_text()
    ref = load_weights(zero_runs["z0"] / "prune" / "model" / "student")
    for name in ("z3", "z2"):
        other = load_weights(zero_runs[name] / "prune" / "model" / "student")
        assert other.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(other[k], ref[k], atol=1e-4, rtol=1e-4, msg=f"{name}:{k}")


@pytest.mark.parametrize("run", ["z3", "z0"])
def test_checkpoints_of_any_zero_stage_finalize_and_match_the_masked_model(zero_runs, run, teacher_dir):
    from transformers import AutoModelForSeq2SeqLM

    from nash_ds.masks import Masking, MaskSet
    from nash_ds.models import family_for
    from nash_ds.stages.finalize import pruned_from_masks

    out = zero_runs[run]
    run_nash("finalize", f"output_dir={out}", *FAST)
    report = json.loads((out / "finalize" / "pruning_report.json").read_text())
    assert report["self_check"]["max_abs_logit_diff"] <= report["self_check"]["atol"]
    assert report["self_check"]["reloaded"]["max_abs_logit_diff"] <= report["self_check"]["atol"]  # float32 export
    assert report["kept_decoder_layers"] == [0, 3]
    exported = AutoModelForSeq2SeqLM.from_pretrained(out / "finalize" / "model", trust_remote_code=True).eval()
    assert sum(p.numel() for p in exported.parameters()) == report["params"]["pruned"]["total"]
    # independent route to the masked model: the prune stage's own export of student + masks
    student = AutoModelForSeq2SeqLM.from_pretrained(out / "prune" / "model" / "student").eval()
    teacher = AutoModelForSeq2SeqLM.from_pretrained(teacher_dir)
    # the report's totals are what the loaded models hold
    n_teacher, n_export = (sum(p.numel() for p in m.parameters()) for m in (teacher, exported))
    assert report["params"]["teacher"]["total"] == n_teacher
    assert report["sparsity_vs_teacher"]["total_params"] == pytest.approx(1 - n_export / n_teacher, abs=1e-12)
    family = family_for(student)
    masks = MaskSet(family, student.config, method="nash", teacher_config=teacher.config)
    masks.load_state_dict(_log_alphas(out))
    pruned_from_masks(student, masking=Masking(family, student.config, masks), kept=[0, 3])  # student: masked
    ids = torch.tensor([[5, 9, 17, 23, 1], [7, 8, 1, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(), "decoder_input_ids": ids[:, :4]}
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, student(**batch).logits, atol=1e-4, rtol=1e-4)


def test_final_finetune_of_a_pruned_export_under_zero3_with_a_partitioned_teacher(zero_runs, teacher_dir, tmp_path):
    """The pipeline's last stage on 2 ranks under ZeRO-3: the export (per-layer widths) and the teacher
    are loaded straight into their partitions, train, and the result keeps the export's shapes."""
    out = zero_runs["z3"]
    if not (out / "finalize" / "model").exists():
        run_nash("finalize", f"output_dir={out}", *FAST)
    pruned = out / "finalize" / "model"
    final = tmp_path / "final"
    r = run_nash("finetune", f"output_dir={final}", f"model.name_or_path={pruned}", "train.distill=true",
                 f"prune.teacher={teacher_dir}", "train.ds_config=ds_configs/zero3_fp32.json", "train.max_steps=3",
                 "train.eval_every=0", "train.micro_batch_size=2", "train.warmup_steps=0", *FAST, ranks=2)
    assert "loaded partitioned (ZeRO-3)" in r.stderr
    before, after = load_weights(pruned), load_weights(final / "finetune" / "model")
    assert before.keys() == after.keys()
    assert all(before[k].shape == after[k].shape for k in before)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    kd = [v for _, v in scalars(final / "finetune" / "tensorboard", "train/kd")]
    assert len(kd) == 3 and all(0 < v < float("inf") for v in kd)


def test_finalize_rejects_missing_corrupt_and_foreign_checkpoints(zero_runs, tmp_path):
    src = zero_runs["z0"] / "prune" / "checkpoints"
    out = tmp_path / "o"
    r = run_nash("finalize", f"output_dir={out}", f"finalize.checkpoint={tmp_path}/nothing", check=False)
    assert r.returncode != 0 and "does not exist" in r.stderr
    r = run_nash("finalize", f"output_dir={out}", f"finalize.checkpoint={src}", "prune.method=cofi", check=False)
    assert r.returncode != 0 and "trained with method 'nash'" in r.stderr
    broken = tmp_path / "broken"
    shutil.copytree(src, broken)
    for f in broken.glob("step-*/*model_states.pt"):
        f.write_bytes(f.read_bytes()[:100])
    r = run_nash("finalize", f"output_dir={out}", f"finalize.checkpoint={broken}", check=False)
    assert r.returncode != 0 and "could not read checkpoint" in r.stderr
    assert not (out / "finalize").exists()


def test_nash_reaches_its_encoder_target_and_distillation_losses_fall(tmp_path):
    """On the demo task with a fine-tuned teacher: sparsity within 0.02 of target, KD and hidden losses fall."""
    out = tmp_path / "demo"
    run_nash("finetune", f"output_dir={out}", TINY, "train.max_steps=60", "train.eval_every=0",
             "train.ds_config=ds_configs/zero0_fp32.json", *FAST)
    run_nash("prune", f"output_dir={out}", f"prune.teacher={out}/finetune/model", "train.max_steps=120",
             "train.eval_every=0", "prune.sparsity_warmup_steps=50", "prune.target_sparsity=0.3",
             "train.ds_config=ds_configs/zero0_fp32.json", "train.micro_batch_size=8", *FAST)
    tb = out / "prune" / "tensorboard"
    final = scalars(tb, "eval/sparsity/encoder")[-1][1]
    assert abs(final - 0.3) <= 0.02, final
    for name in ("kd", "hidden"):
        values = [v for _, v in scalars(tb, f"prune/{name}")]
        assert min(values) > 0
        assert sum(values[-10:]) / 10 < sum(values[:10]) / 10, (name, values[:10], values[-10:])
    assert scalars(tb, "prune/target_sparsity")[-1][1] == pytest.approx(0.3)


@pytest.mark.parametrize("overrides,fragment", [
    (["prune.decoder_layers=9"], "k=9"),
    (["prune.decoder_layers=[0,7]"], "7"),
    (["model.name_or_path=preset:tiny-bart"], "same family"),
])
def test_bad_prune_settings_are_rejected_before_training(teacher_dir, tmp_path, overrides, fragment):
    out = tmp_path / "bad"
    r = run_nash("prune", f"output_dir={out}", f"prune.teacher={teacher_dir}", *overrides, *FAST, check=False)
    assert r.returncode == 2, r.stderr[-2000:]
    assert fragment in r.stderr, r.stderr[-2000:]
    assert not (out / "prune").exists()


def test_sft_trains_the_decoder_cut_and_finalizes_to_a_stock_model(teacher_dir, tmp_path):
    out = tmp_path / "sft"
    run_nash("prune", f"output_dir={out}", f"prune.teacher={teacher_dir}", "prune.method=sft",
             f"model.name_or_path={teacher_dir}", "train.ds_config=ds_configs/zero0_fp32.json", *SHORT)
    run_nash("finalize", f"output_dir={out}", "prune.method=sft", *FAST)
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(out / "finalize" / "model")
    assert type(model).__name__ == "T5ForConditionalGeneration"
    assert model.config.num_decoder_layers == 2
    weights = load_weights(out / "finalize" / "model")
    assert "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in weights
