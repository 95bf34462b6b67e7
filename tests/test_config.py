"""The config tree: defaults, YAML, overrides, and one clear error per bad input."""

import subprocess
import sys
from pathlib import Path

import pytest

from nash_ds.config import RunConfig, load_config, parse_override

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_the_demo():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    assert cfg.data.task == "demo" and cfg.model.name_or_path.startswith("preset:")


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.1\n  max_steps: 7\nprune:\n  method: cofi\n")
    cfg = load_config(str(f), ["train.lr=1e-4", "prune.decoder_layers=[0,3]", "data.mixture=[{task: demo, weight: 2}]"])
    assert cfg.train.lr == 1e-4 and cfg.train.max_steps == 7 and cfg.prune.method == "cofi"
    assert cfg.prune.decoder_layers == [0, 3]
    assert cfg.data.mixture[0].weight == 2.0


@pytest.mark.parametrize("override,fragment", [
    ("train.lrr=1", "unknown config key(s) train.lrr"),
    ("bogus=1", "unknown config key(s) bogus"),
    ("train.lr=abc", "train.lr: expected a number"),
    ("train.max_steps=1.5", "train.max_steps: expected an integer"),
    ("prune.method=magnitude", "prune.method must be nash, cofi or sft"),
    ("prune.target_sparsity=1.0", "prune.target_sparsity must be in [0, 1)"),
    ("prune.target_sparsity=-0.1", "prune.target_sparsity must be in [0, 1)"),
    ("prune.decoder_layers=0", "prune.decoder_layers must be >= 1"),
    ("train.resume=maybe", "train.resume: expected true or false"),
    ("noequals", "not of the form key=value"),
])
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ValueError) as e:
        load_config(None, [override])
    assert fragment in str(e.value)


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ValueError) as e:
        load_config(None, ["train.lrr=1"])
    assert "valid keys under 'train'" in str(e.value) and "micro_batch_size" in str(e.value)


def test_missing_config_file():
    with pytest.raises(ValueError, match="does not exist"):
        load_config("/nonexistent/x.yaml")


def test_parse_override_types():
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    assert parse_override("a=true") == {"a": True}
    assert parse_override("a=1e-4") == {"a": 1e-4}
    assert parse_override("a=t5-large") == {"a": "t5-large"}


def test_shipped_configs_load():
    for f in sorted((REPO / "configs").glob("*.yaml")):
        load_config(str(f))


def test_cli_rejects_bad_input_before_any_output(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, str(REPO / "run.py"), "finetune", f"output_dir={out}", "train.lrr=1"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    assert "unknown config key(s) train.lrr" in r.stderr
    assert not out.exists()


def test_cli_accepts_local_rank_argument(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "run.py"), "finetune", "--local_rank=0", "prune.method=bad"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "prune.method" in r.stderr
