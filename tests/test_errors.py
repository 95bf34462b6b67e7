"""Bad input: one clear error naming what is wrong, and nothing written."""

from __future__ import annotations

import json

import pytest

from tests.helpers import FAST, run_nash


def _fails(tmp_path, *overrides, fragment: str, stage: str = "finetune"):
    out = tmp_path / "run"
    r = run_nash(stage, f"output_dir={out}", *overrides, *FAST, check=False)
    assert r.returncode != 0
    assert fragment in r.stderr, r.stderr[-3000:]
    assert r.stderr.count("nash-ds: error:") == 1
    return out


def test_missing_data_file(tmp_path):
    out = _fails(tmp_path, f"data.task={tmp_path}/nope.jsonl", fragment="nope.jsonl")
    assert not out.exists()


def test_missing_column(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"text": "a b", "summary": "a"}) for _ in range(8)) + "\n")
    out = _fails(tmp_path, f"data.task={f}", "data.source_column=dialogue", fragment="dialogue")
    assert not out.exists()


def test_unknown_family(tmp_path):
    d = tmp_path / "gpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2,
                                               "vocab_size": 100}))
    out = _fails(tmp_path, f"model.name_or_path={d}", "model.tokenizer=nash_ds/demo/tokenizer", fragment="gpt2")
    assert not out.exists()


def test_missing_model_dir(tmp_path):
    out = _fails(tmp_path, f"model.name_or_path={tmp_path}/no_such_model", "model.tokenizer=nash_ds/demo/tokenizer",
                 fragment="no_such_model")
    assert not out.exists()


def test_missing_ds_config(tmp_path):
    out = _fails(tmp_path, "train.ds_config=ds_configs/nope.json", fragment="nope.json")
    assert not out.exists()


def test_finished_output_is_not_overwritten(tmp_path):
    model = tmp_path / "run" / "finetune" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    _fails(tmp_path, fragment="already holds a finished run")
    assert (model / "config.json").read_text() == "{}"


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A real (tiny, random) teacher directory, so that only the setting under test is wrong."""
    from nash_ds.demo import DEMO_TOKENIZER
    from nash_ds.models import load_model
    from nash_ds.stages.common import load_tokenizer, model_kwargs_from_tokenizer

    out = tmp_path_factory.mktemp("teacher")
    tok = load_tokenizer(str(DEMO_TOKENIZER))
    load_model("preset:tiny-t5", **model_kwargs_from_tokenizer(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("overrides,fragment", [
    (["prune.decoder_layers=9"], "k (decoder layers to keep) must be an int in [1, L=4], got k=9"),
    (["prune.decoder_layers=[0,7]"], "kept decoder layers must lie in [0, 4), got [0, 7]"),
    (["prune.method=magnitude"], "prune.method must be nash, cofi or sft, got 'magnitude'"),
    (["prune.target_sparsity=1.2"], "prune.target_sparsity must be in [0, 1), got 1.2"),
])
def test_prune_rejects_bad_settings_before_training(tmp_path, teacher_dir, overrides, fragment):
    out = _fails(tmp_path, f"prune.teacher={teacher_dir}", *overrides, fragment=fragment, stage="prune")
    assert not out.exists()


def test_prune_names_a_missing_teacher_directory(tmp_path):
    out = _fails(tmp_path, f"prune.teacher={tmp_path}/no_teacher", fragment=f"{tmp_path}/no_teacher' looks local but "
                 "has no config.json", stage="prune")
    assert not out.exists()
