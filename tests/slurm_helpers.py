"""Submit launch/nash.sbatch to the local test cluster (.ci/slurm_setup.sh) and watch the job."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SBATCH = REPO / "launch" / "nash.sbatch"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


@functools.cache
def cluster_problem(*, num_nodes: int = 2) -> str | None:
    """Why the Slurm tests cannot run here, or None when the cluster can take a 2-node job."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm is not installed (start the test cluster with: sudo bash .ci/slurm_setup.sh)"
    try:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False, capture_output=True, text=True,
                           timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld is not answering (run .ci/slurm_setup.sh)"
    if r.returncode != 0:
        return f"Slurm cluster is down: sinfo says {r.stderr.strip()!r} (run .ci/slurm_setup.sh)"
    usable = {line.split()[0] for line in r.stdout.splitlines()
              if line.split()[-1].rstrip("*~#") in ("idle", "mix", "alloc", "comp")
              and not line.split()[-1].endswith("*")}
    if len(usable) < num_nodes:
        return f"Slurm cluster has {len(usable)} usable node(s), the tests need {num_nodes}: {r.stdout.strip()!r}"
    return None


def slurm_or_skip() -> None:
    """Skip the calling test, saying why, when no cluster is up; under NASH_REQUIRE_SLURM=1 (CI) fail instead."""
    import pytest

    problem = cluster_problem()
    if problem is None:
        return
    if os.environ.get("NASH_REQUIRE_SLURM") == "1":
        pytest.fail(f"NASH_REQUIRE_SLURM=1 but {problem}")
    pytest.skip(problem)


def job_env(**extra: str) -> dict[str, str]:
    """The submitting environment, which sbatch passes on to every rank."""
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("SLURM_") or k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")]:
        env.pop(key)
    env.update(NASH_PYTHON=sys.executable, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", NASH_DIST_TIMEOUT_S="60")
    env.update(extra)
    return env


@dataclass
class Job:
    """A submitted nash.sbatch job and where its logs go."""
    job_id: str
    batch_log: Path
    rank_log_dir: Path

    def info(self) -> dict[str, str]:
        """`scontrol show job` as a dict ({} once Slurm has forgotten the job)."""
        r = subprocess.run(["scontrol", "show", "job", "-o", self.job_id], check=False, capture_output=True,
                           text=True, timeout=20)
        if r.returncode != 0:
            return {}
        return dict(kv.split("=", 1) for kv in r.stdout.split() if "=" in kv)

    def state(self) -> str:
        return self.info().get("JobState", "UNKNOWN")

    def rank_log(self, rank: int) -> str:
        path = self.rank_log_dir / f"rank-{rank}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        """Batch log and rank logs, for assertion messages."""
        parts = [f"--- {self.batch_log}\n" + (self.batch_log.read_text(errors="replace")
                                              if self.batch_log.exists() else "(none)")]
        for path in sorted(self.rank_log_dir.glob("rank-*.log")):
            parts.append(f"--- {path}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def cancel(self) -> None:
        subprocess.run(["scancel", self.job_id], check=False, capture_output=True, timeout=20)


def submit(args: list[str], *, tmp: Path, sbatch_opts: list[str] = (), env: dict | None = None) -> Job:
    """``sbatch -N2 ... launch/nash.sbatch <args>`` from the repository root; logs under ``tmp``."""
    log_dir = tmp / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = ["sbatch", "--parsable", "-N", "2", "--ntasks-per-node", "1", "--time", "10",
           "--signal", "USR1@30", "-J", "nash-test", "-o", str(tmp / "slurm-%j.out"), *sbatch_opts,
           str(SBATCH), *args]
    env = env or job_env()
    env["NASH_LOG_DIR"] = str(log_dir)
    r = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"{' '.join(cmd)} failed: {r.stderr}"
    job_id = r.stdout.strip().split(";")[0]
    return Job(job_id, tmp / f"slurm-{job_id}.out", log_dir / job_id)


def wait_until(predicate, *, timeout: float, what: str, job: Job | None = None, poll: float = 0.5):
    """Poll ``predicate`` until it returns something truthy; fail with the job's logs on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{job.logs()}\nscontrol: {job.info()}" if job else ""
            if job:
                job.cancel()
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(poll)


def wait_done(job: Job, *, timeout: float) -> str:
    """Wait for a terminal state (a requeued job passes through PENDING and runs again)."""
    return wait_until(lambda: (s := job.state()) in TERMINAL and s, timeout=timeout,
                      what=f"job {job.job_id} to finish", job=job, poll=1.0)


def preempt_and_wait_requeued(job: Job, *, requeue_timeout: float, timeout: float) -> str:
    """What Slurm does before the time limit (--signal=USR1@<s>): signal the ranks, not the batch shell; then wait
    for the job to requeue once and complete. Returns the batch log."""
    subprocess.run(["scancel", "--signal=USR1", job.job_id], check=True, timeout=20)
    wait_until(lambda: int(job.info().get("Restarts", 0)) >= 1, timeout=requeue_timeout, what="the job to requeue",
               job=job)
    state = wait_done(job, timeout=timeout)
    assert state == "COMPLETED", job.logs()
    assert job.info().get("Restarts") == "1", job.info()
    batch_log = job.batch_log.read_text()
    assert "preempted: checkpoint saved (exit 75); requeueing" in batch_log, job.logs()
    return batch_log
