"""The whole pipeline as a user runs it: deepspeed --num_gpus 2 run.py pipeline (shortened)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import FAST, run_nash

pytestmark = pytest.mark.slow


def _stamps(out) -> dict[str, int]:
    """mtime (ns) of every file under the stage outputs: a stage that was skipped changes none."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_pipeline_runs_every_stage_on_two_ranks_and_writes_the_table(tmp_path):
    out = tmp_path / "demo"
    args = [f"output_dir={out}", "train.max_steps=12", "train.eval_every=0", "train.micro_batch_size=8",
            "prune.sparsity_warmup_steps=6", "evaluate.repeats=1",
            "evaluate.warmup=1", *FAST]
    run_nash("pipeline", *args, ranks=2, timeout=900)
    for stage in ("finetune", "final", "finalize"):
        assert (out / stage / "model" / "config.json").is_file(), stage
    assert (out / "prune" / "model" / "student" / "config.json").is_file()
    assert (out / "prune" / "model" / "masks.safetensors").is_file()
    report = json.loads((out / "finalize" / "pruning_report.json").read_text())
    assert report["kept_decoder_layers"] == [0, 7]  # the demo's T5: k=2 of 8 decoder layers
    assert report["sparsity_vs_teacher"]["decoder"] == pytest.approx(0.75, abs=1e-12)

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    final = AutoModelForSeq2SeqLM.from_pretrained(out / "final" / "model", trust_remote_code=True)
    pruned = AutoModelForSeq2SeqLM.from_pretrained(out / "finalize" / "model", trust_remote_code=True)
    teacher = AutoModelForSeq2SeqLM.from_pretrained(out / "finetune" / "model")
    # the final fine-tune kept the pruned shapes
    assert {k: v.shape for k, v in final.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}
    tok = AutoTokenizer.from_pretrained(out / "final" / "model")
    gen = final.generate(**tok(["anna: see you at the cafe at noon ."], return_tensors="pt"), max_new_tokens=5)
    assert gen.shape[0] == 1

    # the closing table: teacher and pruned side by side, counted from the models themselves
    table = json.loads((out / "evaluate" / "report.json").read_text())
    rows = {r["model"]: r for r in table["rows"]}
    assert list(rows) == ["teacher", "finalize", "final"]  # the finalize export and the final model side by side
    assert rows["teacher"]["params"] == sum(p.numel() for p in teacher.parameters())
    assert rows["final"]["params"] == rows["finalize"]["params"] == sum(p.numel() for p in final.parameters())
    assert rows["teacher"]["speedup"] == 1.0 and rows["teacher"]["quality_kept"] == 100.0
    assert rows["final"]["decoder_layers"] == rows["finalize"]["decoder_layers"] == 2
    assert rows["final"]["method"] == rows["finalize"]["method"] == "nash"
    assert (out / "evaluate" / "report.md").read_text().count("| final | nash |") == 1
    # the final fine-tune evaluated its start (the finalize export) and published the better of start and end
    assert rows["final"]["value"] >= rows["finalize"]["value"] - 1e-9

    # a second run finds every stage finished: it changes no file, and reuses the evaluation
    before = _stamps(out)
    run_nash("pipeline", *args, ranks=1, timeout=600)
    assert _stamps(out) == before
