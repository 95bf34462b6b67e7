"""Latency measurement and the evaluate stage on tiny models (no timing assertions: numbers only)."""

from __future__ import annotations

import json

import pytest
import torch

from nash_ds import latency
from tests.conftest import tiny_model

FAST_LATENCY = {"source_length": 12, "new_tokens": 5, "warmup": 0, "repeats": 1}


@pytest.mark.parametrize("num_beams", [1, 3])
def test_forced_generation_gives_exactly_n_tokens(preset, num_beams):
    model = tiny_model(preset)
    # make EOS the most likely token everywhere: only the forcing can keep generation going
    eos = model.config.eos_token_id
    with torch.no_grad():
        model.get_output_embeddings().weight[eos] *= 0
        model.get_output_embeddings().weight[eos] += 10 * model.get_output_embeddings().weight.mean(0)
    inputs = latency.random_inputs(model, batch_size=2, source_length=9)
    assert int(inputs["input_ids"].min()) > max(model.config.pad_token_id, eos)
    for n in (1, 7):
        out = latency.forced_generate(model, inputs, new_tokens=n, num_beams=num_beams)
        assert out.shape == (2, n + 1)  # decoder start token + exactly n


def test_measure_latency_keys_and_positive_numbers():
    model = tiny_model("tiny-t5")
    row = latency.measure_latency(model, batch_size=2, num_beams=2, **FAST_LATENCY)
    assert set(latency.LATENCY_KEYS) <= set(row)
    for key in ("encoder_ms", "first_token_ms", "generate_ms", "tokens_per_s"):
        assert row[key] > 0, (key, row)
    assert row["batch_size"] == 2 and row["num_beams"] == 2 and row["new_tokens"] == 5
    assert row["device"] == "cpu" and row["dtype"] == "float32"


def test_latency_table_interleaves_models_and_batch_sizes():
    models = {"a": tiny_model("tiny-t5"), "b": tiny_model("tiny-bart").to(torch.bfloat16)}
    rows = latency.latency_table(models, batch_sizes=[1, 2], beams=[1], **FAST_LATENCY)
    assert [(r["model"], r["batch_size"]) for r in rows] == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert rows[1]["dtype"] == "bfloat16"
    assert all(r["generate_ms"] > 0 for r in rows)


def test_latency_rejects_bad_settings():
    with pytest.raises(ValueError, match="new_tokens"):
        latency.measure_latency(tiny_model("tiny-t5"), new_tokens=1)
    with pytest.raises(ValueError, match="dtype"):
        latency.resolve_dtype("int8")


# --------------------------------------------------------------------------- the stage


def _save_dense_and_pruned(root):
    """A tiny dense T5 and a NASH-style pruned copy (2 of 4 decoder layers, uneven encoder) as HF dirs."""
    from nash_ds.demo import DEMO_TOKENIZER
    from nash_ds.export import save_hf_dir
    from nash_ds.models import family_for, load_model
    from nash_ds.models.pruning import prune_model
    from nash_ds.plan import PruningPlan
    from nash_ds.stages import common

    tok = common.load_tokenizer(str(DEMO_TOKENIZER))
    dense = load_model("preset:tiny-t5", seed=0, **common.model_kwargs_from_tokenizer(tok)).eval()
    family = family_for(dense)
    student = family.make_student(dense, [0, 3])
    plan = PruningPlan.full(num_encoder_layers=4, num_decoder_layers=2, num_heads=4, encoder_ffn=128,
                            decoder_ffn=128)
    plan.encoder_heads = [[0, 1, 2], [1, 3], [0, 1, 2, 3], [2]]
    plan.encoder_ffn = [list(range(0, 128, 2)), list(range(100)), list(range(128)), list(range(40))]
    pruned = prune_model(student, plan)
    save_hf_dir(dense, tok, root / "finetune" / "model")
    save_hf_dir(pruned, tok, root / "finalize" / "model")
    (root / "finalize" / "pruning_report.json").write_text(json.dumps({"method": "nash"}))
    return root / "finetune" / "model", root / "finalize" / "model"


def _cfg(root, *overrides):
    from nash_ds.config import load_config

    return load_config(None, [f"output_dir={root}", "data.max_eval_samples=8", "generation.max_new_tokens=6",
                              "generation.eval_batch_size=4", "evaluate.latency_source_length=16",
                              "evaluate.latency_new_tokens=4", "evaluate.warmup=0", "evaluate.repeats=1",
                              "evaluate.batch_sizes=[1,2]", *overrides])


def test_evaluate_stage_writes_reports_and_refuses_to_overwrite(tmp_path):
    from nash_ds.stages import evaluate

    dense, _pruned = _save_dense_and_pruned(tmp_path)
    stage_dir = tmp_path / "evaluate"
    result = evaluate.run(_cfg(tmp_path), stage_dir=stage_dir)  # model: finalize/, reference: finetune/
    report = json.loads((stage_dir / "report.json").read_text())
    assert {"rows", "models", "metric", "baseline", "config", "environment"} <= set(report)
    assert [r["model"] for r in report["rows"]] == ["reference", "model"] == [r["model"] for r in result["rows"]]
    ref_row, row = report["rows"]
    assert row["method"] == "nash" and row["decoder_layers"] == 2 and ref_row["decoder_layers"] == 4
    assert row["params"] < ref_row["params"]
    assert 0 < row["sparsity_encoder"] < 1 and ref_row["sparsity_encoder"] == pytest.approx(0)
    assert row["metric"] == "rougeL"  # random weights: the score may be 0, then quality kept is undefined
    assert ref_row["quality_kept"] is None or ref_row["quality_kept"] == pytest.approx(100)
    assert row["generate_ms"] > 0 and row["speedup"] > 0 and ref_row["speedup"] == pytest.approx(1)
    detail = report["models"]["model"]
    assert detail["class"] == "NashT5ForConditionalGeneration"
    assert {r["batch_size"] for r in detail["latency"]} == {1, 2}
    assert set(detail["metrics"]) >= {"rouge1", "rouge2", "rougeL"} and detail["num_examples"] == 8
    assert set(detail["sparsity"]) == {"total_params", "prunable_model", "encoder", "decoder"}
    md = (stage_dir / "report.md").read_text()
    assert "| model | method | rougeL |" in md and "| reference |" in md
    assert (stage_dir / "speedup.png").exists() == (ref_row["quality_kept"] is not None)
    assert any((stage_dir / "tensorboard").iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".evaluate")]  # no temp dir left

    before = (stage_dir / "report.json").read_text()
    with pytest.raises(ValueError, match="overwrite=true"):
        evaluate.run(_cfg(tmp_path), stage_dir=stage_dir)
    assert (stage_dir / "report.json").read_text() == before
    evaluate.run(_cfg(tmp_path, "overwrite=true", f"evaluate.model={dense}", "evaluate.batch_sizes=[1]"),
                 stage_dir=stage_dir)
    again = json.loads((stage_dir / "report.json").read_text())
    assert [r["model"] for r in again["rows"]] == ["model"]  # dense alone: no reference next to itself


def test_compare_returns_table_and_reuses_a_finished_report(tmp_path):
    from nash_ds.stages import evaluate

    dense, pruned = _save_dense_and_pruned(tmp_path)
    cfg, stage_dir = _cfg(tmp_path, "evaluate.batch_sizes=[1]"), tmp_path / "evaluate"
    table = evaluate.compare(cfg, models={"teacher": dense, "pruned": pruned}, reference=dense, stage_dir=stage_dir)
    assert "| teacher | dense |" in table and "| pruned | nash |" in table
    assert evaluate.compare(cfg, models={"teacher": dense, "pruned": pruned}, reference=dense,
                            stage_dir=stage_dir) == table
    report = json.loads((stage_dir / "report.json").read_text())
    assert [r["method"] for r in report["rows"]] == ["dense", "nash"]


def test_plot_several_reports(tmp_path):
    from nash_ds.plot import plot_points, points_from_files

    def report(method, k, value, speedup):
        rows = [{"model": "teacher", "method": "dense", "metric": "rougeL", "quality_kept": 100.0, "speedup": 1.0,
                 "decoder_layers": 12},
                {"model": "pruned", "method": method, "metric": "rougeL", "quality_kept": value, "speedup": speedup,
                 "decoder_layers": k}]
        return {"rows": rows, "baseline": "teacher"}

    paths = []
    for i, (method, k, value, speedup) in enumerate([("nash", 3, 96.0, 2.6), ("cofi", 12, 93.0, 1.4),
                                                      ("sft", 3, 91.0, 2.7)]):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(report(method, k, value, speedup)))
    points = points_from_files(paths)
    assert [p["method"] for p in points] == ["dense", "nash", "cofi", "sft"]  # the dense point appears once
    assert points[1]["label"] == "nash k=3" and points[1]["speedup"] == 2.6
    out = plot_points(points, tmp_path / "fig" / "speedup.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_task_metrics_counts_distinct_predictions(tmp_path):
    """A model that writes the same text for every input scores 1/N distinct predictions (what the real-text
    bench's teacher check, bench/realtext.py check_teacher, refuses)."""
    from nash_ds.data import build_datasets
    from nash_ds.models import load_model
    from nash_ds.stages import common, evaluate

    cfg = _cfg(tmp_path)
    tok = common.load_tokenizer(common.tokenizer_source(cfg))
    data = build_datasets(cfg.data, tok, splits=(cfg.data.eval_split,), seed=0)[cfg.data.eval_split]
    model = load_model("preset:tiny-t5", seed=0, **common.model_kwargs_from_tokenizer(tok)).eval()
    word = tok(data[0]["target"])["input_ids"][0]  # a word of the task's vocabulary
    text = tok.decode([word], skip_special_tokens=True).strip()
    bias = torch.zeros(model.get_output_embeddings().weight.shape[0])
    bias[word] = 1e4
    model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: out + bias)
    out = evaluate.task_metrics(model, tok, cfg, data)
    assert out["num_examples"] == 8
    assert out["distinct_predictions"] == pytest.approx(1 / 8)
    assert len({e["prediction"] for e in out["examples"]}) == 1 and text and text in out["examples"][0]["prediction"]
