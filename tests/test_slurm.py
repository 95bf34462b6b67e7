"""launch/ on a real Slurm cluster: two nodes on this host (.ci/slurm_setup.sh), one CPU rank each.

The Slurm tests skip themselves, saying why, when no cluster is up; CI sets NASH_REQUIRE_SLURM=1
so that a cluster that failed to start is an error instead. The hostfile tests always run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import TINY, load_weights, scalars
from tests.slurm_helpers import REPO, preempt_and_wait_requeued, slurm_or_skip, submit, wait_done, wait_until

sys.path.insert(0, str(REPO / "launch"))
from make_hostfile import env_file_text, expand_nodelist, hostfile_text

# One 2-rank fine-tune (ZeRO-2, gloo): ~40 s of work here; a checkpoint every 2 steps so that a
# preemption lands mid-run with a checkpoint to resume from.
RUN = ["finetune", TINY, "train.max_steps=30", "train.eval_every=0", "train.save_every=2", "train.micro_batch_size=4",
       "train.ds_config=ds_configs/zero2_fp32.json", "train.log_every=1", "data.max_train_samples=256",
       "data.max_eval_samples=16", "generation.max_new_tokens=8", "generation.eval_batch_size=16"]
JOB_TIMEOUT_S = 420




def _first_checkpoint(job, stage_dir):
    """True once the job's first complete checkpoint exists (the run is then mid-way)."""
    if job.state() in ("FAILED", "CANCELLED", "TIMEOUT", "COMPLETED"):
        raise AssertionError(f"job ended before its first checkpoint:\n{job.logs()}")
    return any((stage_dir / "checkpoints").glob("step-*/COMPLETE"))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted 2-node run that (a) checks and (b) compares against."""
    slurm_or_skip()
    tmp = tmp_path_factory.mktemp("slurm_ref")
    out = tmp / "run"
    job = submit([*RUN, f"output_dir={out}"], tmp=tmp)
    state = wait_done(job, timeout=JOB_TIMEOUT_S)
    return job, state, out / "finetune"


@pytest.mark.slurm
@pytest.mark.slow
def test_two_node_job_completes_with_outputs(reference_run):
    job, state, stage = reference_run
    assert state == "COMPLETED", job.logs()
    info = job.info()
    assert info.get("NumNodes") == "2" and info.get("Restarts") == "0", info
    batch_log = job.batch_log.read_text()
    assert "2 ranks = 2 nodes (n1 n2) x 1" in batch_log and "done: all 2 ranks exited 0" in batch_log
    # one log per rank, each from its own node and task id
    for rank, node in ((0, "n1"), (1, "n2")):
        assert f"[srun_task] rank {rank}/2 (local 0) on {node}" in job.rank_log(rank), job.logs()
    assert (stage / "model" / "config.json").is_file()
    assert load_weights(stage / "model")
    assert any((stage / "checkpoints").glob("step-*/COMPLETE"))
    assert len(scalars(stage / "tensorboard", "train/loss")) == 30


@pytest.mark.slurm
@pytest.mark.slow
def test_preempted_job_requeues_resumes_and_matches_uninterrupted_run(reference_run, tmp_path):
    ref_job, ref_state, ref_stage = reference_run
    assert ref_state == "COMPLETED", ref_job.logs()
    out = tmp_path / "run"
    stage = out / "finetune"
    job = submit([*RUN, f"output_dir={out}"], tmp=tmp_path)
    wait_until(lambda: _first_checkpoint(job, stage), timeout=JOB_TIMEOUT_S, what="a first checkpoint", job=job)
    batch_log = preempt_and_wait_requeued(job, requeue_timeout=120, timeout=JOB_TIMEOUT_S)
    assert "restart 1:" in batch_log and "done: all 2 ranks exited 0" in batch_log, job.logs()
    # the requeued run resumed by itself from a checkpoint mid-way (rank logs are appended to)
    after_restart = job.rank_log(0).split("restart 1", 1)[-1]
    m = re.search(r"resumed from \S+ \(step (\d+)\)", after_restart)
    assert m and 0 < int(m.group(1)) < 30, job.logs()
    got, want = load_weights(stage / "model"), load_weights(ref_stage / "model")
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-6, msg=name)


@pytest.mark.slurm
@pytest.mark.slow
def test_killed_rank_fails_the_job_fast_with_a_clear_message(tmp_path):
    slurm_or_skip()
    out = tmp_path / "run"
    job = submit([*RUN, f"output_dir={out}"], tmp=tmp_path)
    wait_until(lambda: _first_checkpoint(job, out / "finetune"), timeout=JOB_TIMEOUT_S,
               what="a first checkpoint", job=job)
    pid = int((job.rank_log_dir / "rank-1.pid").read_text())
    os.kill(pid, signal.SIGKILL)  # both "nodes" are this host
    killed_at = time.monotonic()
    state = wait_done(job, timeout=120)
    took = time.monotonic() - killed_at
    assert state == "FAILED", job.logs()
    assert took < 60, f"job took {took:.0f}s to end after rank 1 died (time limit 600s)\n{job.logs()}"
    batch_log = job.batch_log.read_text()
    assert "a rank failed or was killed, so Slurm stopped them all" in batch_log, job.logs()
    assert "rank-1.exitcode: 137" in batch_log, job.logs()
    assert f"rank 1 (pid {pid}) was killed by signal 9" in batch_log, job.logs()
    assert "Not requeueing" in batch_log and job.info().get("Restarts") == "0"


# --------------------------------------------------------------------------- hostfile (no Slurm)


def test_expand_nodelist_follows_slurm_syntax():
    assert expand_nodelist("n[1-2]") == ["n1", "n2"]
    assert expand_nodelist("gpu[08-10,12],login1") == ["gpu08", "gpu09", "gpu10", "gpu12", "login1"]
    assert expand_nodelist("r[1-2]-g[1-2]") == ["r1-g1", "r1-g2", "r2-g1", "r2-g2"]
    assert expand_nodelist("a,b,a") == ["a", "b"]
    for bad in ("n[1-", "n[2-1]", "n[x]"):
        with pytest.raises(ValueError):
            expand_nodelist(bad)


def test_make_hostfile_cli_writes_slots_and_env_file(tmp_path):
    assert hostfile_text(["a", "b"], slots=8) == "a slots=8\nb slots=8\n"
    with pytest.raises(ValueError, match="at least 1"):
        hostfile_text(["a"], slots=0)
    assert env_file_text({"NCCL_DEBUG": "INFO", "HOME": "/root", "HF_HOME": "/h"}) == "HF_HOME=/h\nNCCL_DEBUG=INFO\n"
    env = {**os.environ, "SLURM_JOB_NODELIST": "c[1-2]", "SLURM_GPUS_PER_NODE": "a100:4", "NCCL_IB_HCA": "mlx5"}
    r = subprocess.run([sys.executable, str(REPO / "launch" / "make_hostfile.py"), "-o", str(tmp_path / "hf"),
                        "--env-file", str(tmp_path / ".deepspeed_env")], check=False, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "hf").read_text() == "c1 slots=4\nc2 slots=4\n"
    assert "NCCL_IB_HCA=mlx5\n" in (tmp_path / ".deepspeed_env").read_text()
