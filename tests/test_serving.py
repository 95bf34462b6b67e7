"""CTranslate2 export: greedy output tokens equal transformers' generate (float32), per family, for a dense, a
decoder-cut and a uniform-width pruned model; per-layer widths are refused by ``run.py export``."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("ctranslate2")

from transformers import AutoTokenizer  # noqa: E402

from nash_ds import serving  # noqa: E402
from nash_ds.demo import DEMO_TOKENIZER  # noqa: E402
from nash_ds.export import save_hf_dir  # noqa: E402
from nash_ds.masks import Masking, MaskSet  # noqa: E402
from nash_ds.models import family_for, load_model  # noqa: E402
from nash_ds.models.pruning import is_remote  # noqa: E402
from nash_ds.stages.finalize import pruned_from_masks  # noqa: E402
from tests.helpers import run_nash  # noqa: E402

NEW_TOKENS = 10


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(DEMO_TOKENIZER))


def _model(preset: str, tok, *, seed: int = 0):
    """A preset with the demo tokenizer's vocab and weights spread wide enough that greedy outputs vary (at
    default init a tiny random model repeats one token)."""
    model = load_model(f"preset:{preset}", vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 2.0 / p.shape[1] ** 0.5)
    return model


def _pruned(model, *, kept: list[int], uniform: bool, seed: int = 0):
    family = family_for(model)
    student = family.make_student(model, kept).eval()
    masks = MaskSet(family, student.config, method="nash", teacher_config=model.config, uniform=uniform)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in masks.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 3.0)
    pruned, _ = pruned_from_masks(student, masking=Masking(family, student.config, masks), kept=kept)
    return pruned


def _inputs(tok, *, rows: int = 6, length: int = 11, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, len(tok), (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # a shorter row, padded on the right
    ids[1, -3:] = tok.pad_token_id
    ids[1, -4] = tok.eos_token_id
    ids[:, -1] = torch.where(mask[:, -1].bool(), torch.tensor(tok.eos_token_id), ids[:, -1])
    return ids, mask


def _assert_same_greedy(model, tok, tmp_path, *, quantization: str = "none"):
    save_hf_dir(model, tok, tmp_path / "hf")
    serving.convert_ctranslate2(tmp_path / "hf", tmp_path / "ct2", quantization=quantization)
    engine = serving.translator(tmp_path / "ct2", threads=1)
    ids, mask = _inputs(tok)
    for min_new in (0, NEW_TOKENS):  # free-running, and forced to the full length (as latency runs are)
        want = serving.hf_greedy_ids(model, ids, mask, max_new_tokens=NEW_TOKENS, min_new_tokens=min_new)
        got = serving.generate_ids(engine, tok, serving.unpadded(ids, mask), max_new_tokens=NEW_TOKENS,
                                   min_new_tokens=min_new)
        assert got == want
    assert len({tuple(r) for r in want}) > 1  # not a degenerate model


@pytest.mark.parametrize("kind", ["dense", "decoder_cut", "uniform"])
def test_ctranslate2_greedy_equals_transformers(tmp_path, preset, tok, kind):
    model = _model(preset, tok)
    if kind == "decoder_cut":
        model = family_for(model).make_student(model, [0, 3]).eval()
    elif kind == "uniform":
        model = _pruned(model, kept=[0, 3], uniform=True)
        assert not is_remote(model)
    _assert_same_greedy(model, tok, tmp_path)


def test_per_layer_widths_are_refused_before_anything_is_written(tmp_path, tok):
    pruned = _pruned(_model("tiny-t5", tok), kept=[0, 3], uniform=False)
    assert is_remote(pruned)
    save_hf_dir(pruned, tok, tmp_path / "hf")
    with pytest.raises(ValueError, match="prune.uniform_widths"):
        serving.check_convertible(tmp_path / "hf")
    out = tmp_path / "run"
    r = run_nash("export", f"export.model={tmp_path / 'hf'}", f"output_dir={out}", check=False)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("nash-ds: error:")]
    assert len(errors) == 1 and "prune.uniform_widths" in errors[0] and "Traceback" not in r.stderr
    assert not out.exists()


def test_export_stage_writes_a_loadable_model_with_tokenizer_and_readme(tmp_path, tok):
    save_hf_dir(_model("tiny-t5", tok), tok, tmp_path / "hf")
    out = tmp_path / "run"
    run_nash("export", f"export.model={tmp_path / 'hf'}", f"output_dir={out}", "export.quantization=int8")
    ct2 = out / "export" / "ctranslate2"
    assert {"model.bin", "config.json", "README.md", "tokenizer.json"} <= {p.name for p in ct2.iterdir()}
    assert json.loads((ct2 / "config.json").read_text())["decoder_start_token"] == tok.pad_token
    assert not [p for p in (out / "export").iterdir() if p.name.startswith(".")]  # no temp dir left
    serving.translator(ct2, compute_type="int8")
    r = run_nash("export", f"export.model={tmp_path / 'hf'}", f"output_dir={out}", check=False)
    assert r.returncode == 2 and "overwrite=true" in r.stderr


def test_evaluate_times_both_engines_with_speedups_within_each(tmp_path, tok):
    dense = _model("tiny-t5", tok)
    save_hf_dir(dense, tok, tmp_path / "dense")
    save_hf_dir(_pruned(dense, kept=[0, 3], uniform=True), tok, tmp_path / "pruned")
    out = tmp_path / "run"
    run_nash("evaluate", f"evaluate.model={tmp_path / 'pruned'}", f"evaluate.reference={tmp_path / 'dense'}",
             f"output_dir={out}", "evaluate.engine=[transformers,ctranslate2]", "data.max_eval_samples=8",
             "evaluate.repeats=1", "evaluate.warmup=0", "generation.max_new_tokens=4", "evaluate.latency_new_tokens=4")
    report = json.loads((out / "evaluate" / "report.json").read_text())
    rows = {(r["engine"], r["model"]): r for r in report["engine_rows"]}
    assert set(rows) == {(e, m) for e in ("transformers", "ctranslate2") for m in ("reference", "model")}
    assert rows[("ctranslate2", "reference")]["speedup"] == 1.0 and rows[("transformers", "reference")]["speedup"] == 1.0
    assert "| ctranslate2 | model |" in (out / "evaluate" / "report.md").read_text()


def test_engine_and_export_values_are_checked():
    from nash_ds.config import load_config

    for override, key in (("evaluate.engine=onnx", "evaluate.engine"), ("export.quantization=int4", "export.quantization"),
                          ("export.format=onnx", "export.format")):
        with pytest.raises(ValueError, match=key):
            load_config(None, [override])
