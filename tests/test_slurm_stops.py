"""Kills and preemptions at three points of ``finetune`` and ``prune`` on the real Slurm cluster (two nodes on this
host, .ci/slurm_setup.sh; skipped with the reason when none is up, an error under NASH_REQUIRE_SLURM=1).

The points, held open by the ``NASH_PAUSE_AT`` test hook (``nash_ds.stop.pause_point``) until the test acts:
- ``startup``: the models are built, DeepSpeed has not yet partitioned them (``dist.initialize``);
- ``step:3``: mid-training, one step after the first checkpoint;
- ``checkpoint``: the first checkpoint's shards are written and fsynced, its ``COMPLETE`` marker is not.

A killed rank (SIGKILL) ends the job FAILED within 60 s, saying which rank died, and never leaves a checkpoint
marked complete that was not. A preempted job (``scancel --signal=USR1``, what ``--signal=USR1@<s>`` sends before
the time limit) exits 75, requeues itself, resumes, and ends with the uninterrupted run's weights (and, for
``prune``, masks; the lambdas and the ZeRO-3-partitioned teacher and optimizer state come back from the checkpoint,
or the masks would not match).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import FAST, TINY, run_nash
from tests.slurm_helpers import job_env, preempt_and_wait_requeued, slurm_or_skip, submit, wait_done, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STEPS = ["train.max_steps=8", "train.eval_every=0", "train.save_every=2", "train.micro_batch_size=4",
         "data.max_train_samples=128", "data.max_eval_samples=16", "train.log_every=1",
         "generation.max_new_tokens=8", "generation.eval_batch_size=16"]
POINTS = {"startup": "startup", "mid-training": "step:3", "checkpoint-write": "checkpoint"}
JOB_TIMEOUT_S = 420




@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    slurm_or_skip()
    out = tmp_path_factory.mktemp("teacher")
    run_nash("finetune", TINY, f"output_dir={out}", "train.max_steps=4", "train.eval_every=0", *FAST)
    return out / "finetune" / "model"


def _args(stage: str, out: Path, teacher: Path) -> list[str]:
    if stage == "finetune":
        return ["finetune", TINY, *STEPS, "train.ds_config=ds_configs/zero2_fp32.json", f"output_dir={out}"]
    return ["prune", f"prune.teacher={teacher}", "prune.method=nash", "prune.decoder_layers=2",
            "prune.target_sparsity=0.3", "prune.sparsity_warmup_steps=4", *STEPS,
            "train.ds_config=ds_configs/zero3_fp32.json", f"output_dir={out}"]


_REFERENCES: dict[str, Path] = {}


def _reference(stage: str, teacher: Path, tmp_path_factory) -> Path:
    """The uninterrupted 2-node run of ``stage`` (once per module)."""
    if stage not in _REFERENCES:
        tmp = tmp_path_factory.mktemp(f"ref_{stage}")
        job = submit(_args(stage, tmp / "run", teacher), tmp=tmp)
        state = wait_done(job, timeout=JOB_TIMEOUT_S)
        assert state == "COMPLETED", job.logs()
        _REFERENCES[stage] = tmp / "run" / stage / "model"
    return _REFERENCES[stage]


def _tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file of an export (weights, and the masks of a prune export)."""
    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update({f"{f.name}:{k}": v for k, v in load_file(f).items()})
    assert out, f"no safetensors in {model_dir}"
    return out


def _paused(job, pause_dir: Path):
    """Both ranks are held at the pause point: the pids they wrote."""
    if job.state() in ("FAILED", "CANCELLED", "TIMEOUT", "COMPLETED"):
        raise AssertionError(f"job ended before reaching the pause point:\n{job.logs()}")
    markers = sorted(pause_dir.glob("*.rank*"))
    return len(markers) == 2 and {m.name.rsplit(".rank", 1)[1]: int(m.read_text()) for m in markers}


def _submit_paused(stage: str, point: str, tmp: Path, teacher: Path):
    pause_dir = tmp / "pause"
    pause_dir.mkdir()
    env = job_env(NASH_PAUSE_AT=point, NASH_PAUSE_DIR=str(pause_dir), NASH_PAUSE_S="90")
    job = submit(_args(stage, tmp / "run", teacher), tmp=tmp, env=env)
    pids = wait_until(lambda: _paused(job, pause_dir), timeout=JOB_TIMEOUT_S, what=f"both ranks at {point}", job=job)
    return job, pids


@pytest.mark.parametrize("where", list(POINTS))
@pytest.mark.parametrize("stage", ["finetune", "prune"])
def test_killed_rank_ends_the_job_within_60s(stage, where, teacher, tmp_path):
    job, pids = _submit_paused(stage, POINTS[where], tmp_path, teacher)
    os.kill(pids["1"], signal.SIGKILL)  # both "nodes" are this host
    killed_at = time.monotonic()
    state = wait_done(job, timeout=120)
    took = time.monotonic() - killed_at
    print(f"[kill] {stage} at {where}: the job ended {took:.1f} s after rank 1 was killed ({state})")
    assert state == "FAILED", job.logs()
    assert took < 60, f"job took {took:.0f}s to end after rank 1 died\n{job.logs()}"
    batch_log = job.batch_log.read_text()
    assert f"rank 1 (pid {pids['1']}) was killed by signal 9" in batch_log, job.logs()
    assert "Not requeueing" in batch_log and job.info().get("Restarts") == "0"
    ckpts = tmp_path / "run" / stage / "checkpoints"
    complete = sorted(p.parent.name for p in ckpts.glob("step-*/COMPLETE"))
    if where == "checkpoint-write":  # killed between the shards and the marker: that checkpoint is not complete
        assert complete == [], complete
    assert not (tmp_path / "run" / stage / "model").exists()


@pytest.mark.parametrize("where", list(POINTS))
@pytest.mark.parametrize("stage", ["finetune", "prune"])
def test_preempted_job_resumes_and_matches_the_uninterrupted_run(stage, where, teacher, tmp_path,
                                                                 tmp_path_factory):
    reference = _reference(stage, teacher, tmp_path_factory)
    job, _ = _submit_paused(stage, POINTS[where], tmp_path, teacher)
    preempt_and_wait_requeued(job, requeue_timeout=180, timeout=JOB_TIMEOUT_S)
    assert "resumed from" in job.rank_log(0).split("restart 1", 1)[-1], job.logs()
    got, want = _tensors(tmp_path / "run" / stage / "model"), _tensors(reference)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-6, msg=name)
