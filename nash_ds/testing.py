"""Run nash-ds as its users do, for tests/ and bench/: a script (``run.py`` and a stage, or a bench script) on one
rank (``python``) or on N (the DeepSpeed launcher, on a free port) with the hub offline; and random-weight model
directories. The one copy of each, which tests/helpers.py and the bench scripts import; the library never does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from nash_ds.dist import free_port

REPO = Path(__file__).resolve().parent.parent
"""This checkout: run.py, ds_configs/, bench/."""
RUN_PY = REPO / "run.py"
DEEPSPEED = Path(sys.executable).parent / "deepspeed"
"""The DeepSpeed launcher of this interpreter's environment."""
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""What a launcher sets for its ranks."""


def launch_command(script: str | Path, *args: Any, ranks: int = 1) -> list[str]:
    """``python script args`` on one rank; ``deepspeed --num_gpus ranks --master_port <free port> script args`` on
    several (CPU ranks on a machine without GPUs)."""
    if ranks == 1:
        return [sys.executable, str(script), *map(str, args)]
    return [str(DEEPSPEED), "--num_gpus", str(ranks), "--master_port", str(free_port()), str(script), *map(str, args)]


def offline_env(*, drop: Sequence[str] = (), **extra: str) -> dict[str, str]:
    """This process's environment with the hub and datasets offline, tokenizers single-threaded and this checkout
    first on PYTHONPATH; less the variables in ``drop`` (e.g. ``LAUNCHER_ENV``); then ``extra``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    for key in drop:
        env.pop(key, None)
    env.update(extra)
    return env


def run_ranks(script: str | Path, *args: Any, ranks: int = 1, env: dict[str, str], log: Path | None = None,
              header: bool = True, timeout: float | None = None, cwd: Path = REPO,
              stdin: int | IO | None = None) -> subprocess.CompletedProcess:
    """``launch_command(script, *args, ranks=ranks)`` run to its end in ``cwd``; the result's ``args`` is the command.

    Its stdout and stderr go to ``log`` together (after the command line and a blank line, with ``header``), else
    they are captured as text in the result. Past ``timeout`` seconds ``subprocess.TimeoutExpired`` is raised.
    """
    cmd = launch_command(script, *args, ranks=ranks)
    if log is None:
        return subprocess.run(cmd, cwd=cwd, env=env, stdin=stdin, capture_output=True, text=True, timeout=timeout,
                              check=False)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        if header:
            f.write(" ".join(cmd) + "\n\n")
            f.flush()
        return subprocess.run(cmd, cwd=cwd, env=env, stdin=stdin, stdout=f, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False)


def random_model_dir(config: Any, out: Path, *, seed: int = 0, tokenizer: Any = None,
                     head_std: float | None = None) -> Path:
    """``models.random_model(config, seed=seed, head_std=head_std)`` saved as a Hugging Face directory ``out``,
    with ``tokenizer`` when given; returns ``out``."""
    from nash_ds.models import random_model

    random_model(config, seed=seed, head_std=head_std).save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
