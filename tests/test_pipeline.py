"""The whole pipeline as a user runs it: deepspeed --num_gpus 2 run.py pipeline (shortened)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import FAST, run_nash

pytestmark = pytest.mark.slow


def test_pipeline_runs_every_stage_on_two_ranks_and_prints_the_table(tmp_path):
    out = tmp_path / "demo"
    args = [f"output_dir={out}", "train.max_steps=12", "train.eval_every=0", "train.micro_batch_size=8",
            "prune.sparsity_warmup_steps=6", "pipeline.final_distill=true", "evaluate.repeats=1",
            "evaluate.warmup=1", *FAST]
    r = run_nash("pipeline", *args, ranks=2, timeout=900)
    for stage in ("finetune", "final", "finalize"):
        assert (out / stage / "model" / "config.json").is_file(), stage
    assert (out / "prune" / "model" / "student" / "config.json").is_file()
    assert (out / "prune" / "model" / "masks.safetensors").is_file()
    report = json.loads((out / "finalize" / "pruning_report.json").read_text())
    assert report["kept_decoder_layers"] == [0, 3]
    assert report["sparsity_vs_teacher"]["decoder"] == pytest.approx(0.5)
    assert (out / "evaluate" / "report.json").is_file()
    text = r.stdout
    assert "teacher" in text and "pruned" in text  # the closing table

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    final = AutoModelForSeq2SeqLM.from_pretrained(out / "final" / "model", trust_remote_code=True)
    pruned = AutoModelForSeq2SeqLM.from_pretrained(out / "finalize" / "model", trust_remote_code=True)
    # the final fine-tune kept the pruned shapes
    assert {k: v.shape for k, v in final.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}
    tok = AutoTokenizer.from_pretrained(out / "final" / "model")
    gen = final.generate(**tok(["anna: see you at the cafe at noon ."], return_tensors="pt"), max_new_tokens=5)
    assert gen.shape[0] == 1

    # a second run finds every stage finished and only re-evaluates
    r2 = run_nash("pipeline", *args, ranks=1, timeout=600)
    assert r2.stdout.count("is finished, skipping") == 4
    assert "teacher" in r2.stdout and "pruned" in r2.stdout
