"""The README's "Using the result" snippet, run as a user runs it: stock transformers, no terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer

from nash_ds.demo import DEMO_TOKENIZER
from nash_ds.export import save_hf_dir
from nash_ds.masks import Masking
from nash_ds.models import family_for, load_model
from nash_ds.models.pruning import is_remote
from nash_ds.stages.common import model_kwargs_from_tokenizer
from nash_ds.stages.finalize import pruned_from_masks
from tests.helpers import REPO
from tests.test_finalize import _random_masks

README_PATH = "runs/demo/finalize/model"


def readme_snippet() -> str:
    """The indented code block under "### Using the result" in README.md."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Using the result"):]
    block = re.search(r"\n\n((?:    .*\n|\n)+)", section).group(1)
    return "\n".join(line[4:] for line in block.splitlines())


def demo_like_export(preset: str, out) -> None:
    """A pruned export with per-layer widths (random masks) and the demo tokenizer, as finalize writes it."""
    tok = AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    teacher = load_model(f"preset:{preset}", **model_kwargs_from_tokenizer(tok)).eval()
    family = family_for(teacher)
    student = family.make_student(teacher, [0, 3]).eval()
    masks = _random_masks(family, student, teacher, "nash", seed=0)
    pruned, plan = pruned_from_masks(student, masking=Masking(family, student.config, masks), kept=[0, 3])
    assert is_remote(pruned) and len({len(f) for f in plan.encoder_ffn}) > 1  # per-layer widths
    with torch.no_grad():  # random weights favour the special tokens; zero their rows so it says words
        pruned.get_output_embeddings().weight[:4] = 0.0
    save_hf_dir(pruned, tok, out)


@pytest.mark.parametrize("preset", ["tiny-t5", "tiny-bart"])
def test_readme_snippet_runs_without_a_terminal_or_questions(tmp_path, preset):
    code = readme_snippet()
    assert README_PATH in code and "trust_remote_code=True" in code
    export = tmp_path / "export"
    demo_like_export(preset, export)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NASH_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH="")  # stock transformers only: no nash_ds on the path
    r = subprocess.run([sys.executable, "-c", code.replace(README_PATH, str(export))], check=False,
                       cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "[y/N]" not in out and "custom code" not in out, out
    assert "You are using a model of type" not in out, out
    summary = r.stdout.strip().splitlines()
    assert summary and summary[-1].strip(), out  # a generated summary was printed


@pytest.mark.parametrize("preset", ["tiny-t5", "tiny-mt5", "tiny-bart", "tiny-mbart"])
def test_exports_have_the_stock_model_type_and_nash_ds_loads_its_own_classes(tmp_path, preset):
    import json

    from nash_ds.models import load_config

    demo_like_export(preset, tmp_path / "export")
    config_json = json.loads((tmp_path / "export" / "config.json").read_text())
    stock = family_for(load_model(f"preset:{preset}").config).model_types[0]
    assert config_json["model_type"] in (stock, "t5")  # an mT5 export is a T5 with per-layer widths
    assert config_json["auto_map"]["AutoConfig"].startswith("configuration_nash_")
    config = load_config(str(tmp_path / "export"))
    assert family_for(config).is_export(config) and type(config).__module__.startswith("nash_ds.models.remote")
    model = load_model(str(tmp_path / "export"))
    assert type(model).__module__.startswith("nash_ds.models.remote")  # never the directory's own code
    with pytest.raises(ValueError, match="cannot prune a pruned"):
        family_for(config).check_prunable(config)
