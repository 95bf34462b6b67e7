"""Stop signals outside training, and checkpoints that survive a crash (one rank, through run.py).

A stop (SIGUSR1 / SIGTERM; here the ``NASH_STOP_AT`` hook, which takes the same path) in ``finalize``,
``evaluate``, ``estimate``, ``profile`` or between the pipeline's stages exits 75 and publishes nothing; the
same command run again finishes the work. A checkpoint's files are fsynced before its ``COMPLETE`` marker; an
unreadable newest checkpoint gives way to the previous one, in a resume and in ``finalize``, with a warning.
The same on two nodes under Slurm, with kills: tests/test_slurm_stops.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nash_ds.errors import EXIT_PREEMPTED
from tests.helpers import FAST, REPO, TINY, env, load_weights, run_nash

pytestmark = pytest.mark.slow

PRUNE = ["pipeline.prune_max_steps=4", "train.save_every=2", "train.eval_every=0", "pipeline.final_finetune=false",
         "pipeline.evaluate=false", "prune.decoder_layers=2", "prune.sparsity_warmup_steps=2"]


def _stopped(r: subprocess.CompletedProcess, where: str) -> None:
    assert r.returncode == EXIT_PREEMPTED, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    assert f"during {where}" in r.stderr or where in r.stderr, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def _no_temp_dirs(root: Path) -> None:
    left = [p for p in root.rglob(".*.tmp-*")]
    assert not left, left


@pytest.fixture(scope="module")
def stopped_pipeline(tmp_path_factory):
    """A pipeline stopped after its prune stage: finetune and prune are finished, finalize is not."""
    out = tmp_path_factory.mktemp("pipe") / "run"
    r = run_nash("pipeline", TINY, f"output_dir={out}", "train.max_steps=4", *PRUNE, *FAST, check=False,
                 extra_env={"NASH_STOP_AT": "pipeline:prune"})
    return out, r


def test_pipeline_stops_between_stages_and_the_rerun_skips_what_is_finished(stopped_pipeline, tmp_path):
    out, r = stopped_pipeline
    _stopped(r, "after the pipeline's prune stage")
    assert (out / "finetune" / "model" / "config.json").is_file() and (out / "prune" / "model").is_dir()
    assert not (out / "finalize").exists()
    run = tmp_path / "run"
    shutil.copytree(out, run)
    r = run_nash("pipeline", TINY, f"output_dir={run}", "train.max_steps=4", *PRUNE, *FAST)
    text = r.stdout + r.stderr
    assert f"pipeline: {run / 'finetune'} is finished, skipping" in text
    assert f"pipeline: {run / 'prune'} is finished, skipping" in text
    assert (run / "finalize" / "pruning_report.json").is_file()


@pytest.mark.parametrize("point", ["finalize:read", "finalize:check", "finalize:publish"])
def test_finalize_stops_at_each_point_without_publishing(stopped_pipeline, tmp_path, point):
    src, _ = stopped_pipeline
    run = tmp_path / "run"
    shutil.copytree(src, run)
    r = run_nash("finalize", f"output_dir={run}", "prune.decoder_layers=2", *FAST, check=False,
                 extra_env={"NASH_STOP_AT": point})
    _stopped(r, "finalize")
    assert "nothing was published" in r.stderr
    assert not (run / "finalize").exists()
    _no_temp_dirs(run)
    if point == "finalize:publish":  # the rerun finishes the job
        run_nash("finalize", f"output_dir={run}", "prune.decoder_layers=2", *FAST)
        check = json.loads((run / "finalize" / "pruning_report.json").read_text())["self_check"]
        assert check["max_abs_logit_diff"] <= check["atol"]


def test_finalize_falls_back_to_the_previous_checkpoint_when_the_newest_is_unreadable(stopped_pipeline, tmp_path):
    src, _ = stopped_pipeline
    run = tmp_path / "run"
    shutil.copytree(src, run)
    ckpts = run / "prune" / "checkpoints"
    tags = sorted(p.parent.name for p in ckpts.glob("step-*/COMPLETE"))
    assert tags == ["step-0000002", "step-0000004"], tags
    states = ckpts / tags[-1] / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[: states.stat().st_size // 2])  # a crash mid-write on a bad disk
    r = run_nash("finalize", f"output_dir={run}", "prune.decoder_layers=2", *FAST)
    assert f"checkpoint {ckpts / tags[-1]} cannot be read" in r.stderr + r.stdout
    assert "falling back to the previous one" in r.stderr + r.stdout
    report = json.loads((run / "finalize" / "pruning_report.json").read_text())
    assert report["checkpoint_tag"] == tags[0]


def test_resume_falls_back_to_the_previous_checkpoint_and_matches_the_uninterrupted_run(tmp_path):
    common = [TINY, "train.max_steps=6", "train.eval_every=0", "train.save_every=2", "train.micro_batch_size=4",
              *FAST]
    full, part = tmp_path / "full", tmp_path / "part"
    run_nash("finetune", f"output_dir={full}", *common)
    r = run_nash("finetune", f"output_dir={part}", *common, check=False, extra_env={"NASH_STOP_AT_STEP": "4"})
    assert r.returncode == EXIT_PREEMPTED, r.stderr[-3000:]
    ckpts = part / "finetune" / "checkpoints"
    newest = ckpts / "step-0000004" / "mp_rank_00_model_states.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    r = run_nash("finetune", f"output_dir={part}", *common)
    text = r.stdout + r.stderr
    assert f"checkpoint {ckpts / 'step-0000004'} cannot be read" in text and "falling back" in text
    assert "(step 2)" in text.split("resumed from", 1)[1].split("\n", 1)[0]
    wf, wp = load_weights(full / "finetune" / "model"), load_weights(part / "finetune" / "model")
    for k in wf:
        torch.testing.assert_close(wp[k], wf[k], atol=1e-6, rtol=1e-6, msg=k)


def test_a_refused_pickle_is_never_skipped_for_an_older_checkpoint(stopped_pipeline, tmp_path):
    from tests.helpers import write_crafted_checkpoint

    src, _ = stopped_pipeline
    run = tmp_path / "run"
    shutil.copytree(src, run)
    ckpts = run / "prune" / "checkpoints"
    marker = tmp_path / "ran"
    shutil.rmtree(ckpts / "step-0000004")
    write_crafted_checkpoint(ckpts, marker, tag="step-0000004", method="nash")
    r = run_nash("finalize", f"output_dir={run}", "prune.decoder_layers=2", *FAST, check=False)
    assert r.returncode == 2 and "refused to load" in r.stderr, r.stderr[-3000:]
    assert not marker.exists() and not (run / "finalize").exists()


@pytest.mark.parametrize("point", ["evaluate:generate", "evaluate:publish"])
def test_evaluate_stops_without_publishing_and_the_rerun_finishes(stopped_pipeline, tmp_path, point):
    src, _ = stopped_pipeline
    model = src / "finetune" / "model"
    out = tmp_path / "run"
    args = [f"output_dir={out}", f"evaluate.model={model}", "evaluate.repeats=1", "evaluate.warmup=0", *FAST]
    r = run_nash("evaluate", *args, check=False, extra_env={"NASH_STOP_AT": point})
    _stopped(r, "evaluate")
    assert not (out / "evaluate").exists()
    _no_temp_dirs(tmp_path)
    run_nash("evaluate", *args)
    assert (out / "evaluate" / "report.json").is_file()


def test_estimate_and_profile_stop_with_exit_75(stopped_pipeline, tmp_path):
    r = run_nash("estimate", TINY, check=False, extra_env={"NASH_STOP_AT": "estimate"})
    _stopped(r, "estimate")
    out = tmp_path / "run"
    args = [TINY, f"output_dir={out}", "evaluate.repeats=1", "evaluate.warmup=0", "evaluate.latency_new_tokens=2",
            "evaluate.latency_source_length=8"]
    r = run_nash("profile", *args, check=False, extra_env={"NASH_STOP_AT": "profile:depths"})
    _stopped(r, "profile")
    assert not list(out.rglob("*.json")), list(out.rglob("*"))


def test_checkpoint_files_are_fsynced_before_complete(tmp_path):
    """Every file of a checkpoint has been fsynced when its COMPLETE marker is renamed into place."""
    code = f"""
import os, sys, json
events = []
real_fsync, real_replace = os.fsync, os.replace
def fsync(fd):
    try:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{{fd}}")))
    except OSError:
        pass
    return real_fsync(fd)
def replace(src, dst, *a, **k):
    events.append(("replace", os.fspath(dst)))
    return real_replace(src, dst, *a, **k)
os.fsync, os.replace = fsync, replace
sys.path.insert(0, {str(REPO)!r})
from nash_ds.cli import main
code = main(["finetune", {TINY!r}, "output_dir={tmp_path / 'run'}", "train.max_steps=2", "train.save_every=2",
             "train.eval_every=0", *{FAST!r}])
json.dump(events, open({str(tmp_path / 'events.json')!r}, "w"))
sys.exit(code)
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    events = json.loads((tmp_path / "events.json").read_text())
    tag_dir = tmp_path / "run" / "finetune" / "checkpoints" / "step-0000002"
    done = next(i for i, (kind, path) in enumerate(events) if kind == "replace" and path == str(tag_dir / "COMPLETE"))
    synced = {path for kind, path in events[:done] if kind == "fsync"}
    files = [p for p in tag_dir.rglob("*") if p.is_file() and p.name != "COMPLETE"]
    assert files and all(str(p) in synced for p in files), sorted(str(p) for p in files if str(p) not in synced)
    assert str(tag_dir / "COMPLETE.tmp") in synced  # the marker itself, before its rename
