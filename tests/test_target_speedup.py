"""Pruning to a speed: the prune stage holds the expected latency at 1/X, the finalize report predicts
it, and `run.py profile` measures and caches a latency model."""

from __future__ import annotations

import json

import pytest

from tests.helpers import FAST, run_nash, scalars

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny T5 teacher that knows the demo task a little (so masks have something to keep)."""
    out = tmp_path_factory.mktemp("teacher")
    run_nash("finetune", f"output_dir={out}", "model.name_or_path=preset:tiny-t5", "train.max_steps=40",
             "train.eval_every=0", "train.ds_config=ds_configs/zero0_fp32.json", *FAST)
    return out / "finetune" / "model"


def _fixed_profile(teacher, path):
    """A latency model of the teacher's shape with fixed coefficients: the test does not depend on timing.
    The encoder is costly here, so that reaching the target needs encoder pruning besides the decoder cut."""
    from transformers import AutoConfig

    from tests.test_latency_model import synthetic
    from nash_ds.latency_model import save_profile

    m = synthetic(AutoConfig.from_pretrained(teacher), encoder={"base": 2.0, "attn": 0.5, "head": 1.0, "ffn": 0.5,
                                                                 "dim": 0.05})
    m.num_encoder_layers = m.num_decoder_layers = 4
    save_profile(m, path)
    return m


def test_mask_learning_reaches_the_target_speedup_and_finalize_predicts_it(teacher, tmp_path):
    profile = _fixed_profile(teacher, tmp_path / "latency.json")
    cut_alone = profile.dense_ms() / profile.generate_ms([4] * 4, [128] * 4, 2)
    target = round((cut_alone + profile.best_speedup(2, 0.6)) / 2, 3)
    assert cut_alone + 0.05 < target < profile.best_speedup(2, 0.6)  # the encoder has to be pruned
    out = tmp_path / "run"
    run_nash("prune", f"output_dir={out}", f"prune.teacher={teacher}", f"model.name_or_path={teacher}",
             f"prune.target_speedup={target}", f"prune.latency_profile={tmp_path / 'latency.json'}",
             "prune.decoder_layers=2", "train.max_steps=120", "train.eval_every=60", "prune.sparsity_warmup_steps=50",
             "train.micro_batch_size=8", "train.ds_config=ds_configs/zero0_fp32.json", *FAST)
    tb = out / "prune" / "tensorboard"
    expected = [v for _, v in scalars(tb, "prune/expected_speedup")]
    assert expected[0] < target - 0.05  # it started below the target ...
    assert abs(expected[-1] - target) / target <= 0.02, expected[-10:]  # ... and ends within 2% of it
    assert scalars(tb, "prune/target_speedup")[-1][1] == pytest.approx(target)
    run_nash("finalize", f"output_dir={out}", *FAST)
    report = json.loads((out / "finalize" / "pruning_report.json").read_text())
    assert abs(report["predicted_speedup"] - target) / target <= 0.05, report["predicted_speedup"]
    assert report["target_speedup"] == target
    assert report["predicted_ms"]["generate_ms"] == pytest.approx(
        report["predicted_ms"]["encoder_ms"] + report["predicted_ms"]["decoder_ms"])
    assert report["kept_decoder_layers"] == [0, 3]


def test_an_unreachable_target_is_refused_before_training_with_the_best_reachable_speedup(teacher, tmp_path):
    _fixed_profile(teacher, tmp_path / "latency.json")
    out = tmp_path / "run"
    r = run_nash("prune", f"output_dir={out}", f"prune.teacher={teacher}", f"model.name_or_path={teacher}",
                 "prune.target_speedup=20", f"prune.latency_profile={tmp_path / 'latency.json'}", *FAST, check=False)
    assert r.returncode == 2
    assert "prune.target_speedup=20 is not reachable: the best reachable speedup is" in r.stderr
    assert not (out / "prune").exists()


def test_profile_measures_caches_and_reuses(tmp_path):
    out = tmp_path / "p"
    args = [f"output_dir={out}", "profile.model=preset:tiny-t5", "evaluate.repeats=1", "evaluate.warmup=1",
            "evaluate.latency_new_tokens=4", "evaluate.latency_source_length=16"]
    r = run_nash("profile", *args)
    data = json.loads((out / "profile" / "latency.json").read_text())
    (entry,) = data["profiles"].values()
    assert entry["key"]["source_length"] == 16 and entry["key"]["new_tokens"] == 4
    assert {p["k"] for p in entry["probes"]} == {1, 2, 4}
    assert all(v >= 0 for v in [*entry["encoder"].values(), *entry["decoder"].values()])
    assert "decoder ms =" in r.stderr
    r2 = run_nash("profile", *args)
    assert "profile: reusing" in r2.stderr
    assert json.loads((out / "profile" / "latency.json").read_text()) == data


def test_target_speedup_profiled_on_the_spot_on_two_ranks_reaches_the_evaluate_table(teacher, tmp_path):
    """No profile given: rank 0 measures one with the evaluate settings (the others wait), caches it in
    <output_dir>/profile/, picks k; finalize and evaluate then show the predicted speedup beside the measured."""
    out = tmp_path / "run"
    r = run_nash("prune", f"output_dir={out}", f"prune.teacher={teacher}", f"model.name_or_path={teacher}",
                 "prune.target_speedup=1.2", "evaluate.repeats=2", "evaluate.warmup=1", "train.max_steps=6",
                 "train.eval_every=0", "prune.sparsity_warmup_steps=3", "train.micro_batch_size=4", *FAST, ranks=2)
    assert "prune: target speedup 1.20x: k=" in r.stderr
    cached = json.loads((out / "profile" / "latency.json").read_text())["profiles"]
    assert len(cached) == 1
    run_nash("finalize", f"output_dir={out}", *FAST)
    report = json.loads((out / "finalize" / "pruning_report.json").read_text())
    assert report["predicted_speedup"] > 1.0 and report["target_speedup"] == 1.2
    k = len(report["kept_decoder_layers"])
    assert report["latency_profile"].startswith("profile of t5 on cpu")
    run_nash("evaluate", f"output_dir={out}", f"evaluate.model={out / 'finalize' / 'model'}",
             f"evaluate.reference={teacher}", "evaluate.repeats=1", "evaluate.warmup=1", *FAST)
    table = json.loads((out / "evaluate" / "report.json").read_text())
    rows = {r["model"]: r for r in table["rows"]}
    assert rows["model"]["predicted_speedup"] == report["predicted_speedup"]
    assert rows["reference"]["predicted_speedup"] == 1.0
    assert rows["model"]["decoder_layers"] == k
    assert "| predicted speedup |" in (out / "evaluate" / "report.md").read_text()
