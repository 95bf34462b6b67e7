"""Run nash-ds the way users do: through run.py, with the real DeepSpeed launcher for 2 ranks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file

from nash_ds.dist import free_port  # noqa: F401 - the one free-port helper, re-exported for the tests
from nash_ds.testing import DEEPSPEED, LAUNCHER_ENV, REPO, RUN_PY, offline_env, run_ranks  # noqa: F401 - re-exported

TINY = "model.name_or_path=preset:tiny-t5"
"""The 4+4-layer tiny T5 (the demo's default is the 8+8 demo-t5): put it first, so later overrides win."""

# small and fast: short sequences, a handful of steps
FAST = ["data.max_train_samples=256", "data.max_eval_samples=16", "train.log_every=1",
        "generation.max_new_tokens=8", "generation.eval_batch_size=16"]


def env(**extra) -> dict:
    """The tests' subprocess environment: ``offline_env`` with one thread and a 300 s collective timeout."""
    return offline_env(drop=("RANK", "WORLD_SIZE"), OMP_NUM_THREADS="1", NASH_DIST_TIMEOUT_S="300", **extra)


def run_nash(stage: str, *overrides: str, ranks: int = 1, check: bool = True, timeout: int = 600,
             extra_env: dict | None = None, subprocess_: bool = False) -> subprocess.CompletedProcess:
    """``run.py stage overrides`` on 1 rank or N ranks (deepspeed --num_gpus N). One rank runs inside this process
    (``run_in_process``; ``timeout`` does not apply there) unless ``subprocess`` or NASH_TEST_SUBPROCESS=1 asks for a
    fresh ``python run.py``."""
    if ranks == 1 and not subprocess_ and os.environ.get("NASH_TEST_SUBPROCESS") != "1":
        return run_in_process(stage, *overrides, check=check, extra_env=extra_env)
    r = run_ranks(RUN_PY, stage, *overrides, ranks=ranks, env=env(**(extra_env or {})), timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(r.args)} exited {r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n"
                             f"--- stderr\n{r.stderr[-6000:]}")
    return r


def run_in_process(stage: str, *overrides: str, check: bool = True,
                   extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """``run.py stage overrides`` on one rank inside this process (``cli.main``, as run.py calls it): no fresh
    interpreter importing torch, transformers and DeepSpeed again. The environment is ``env()``'s; afterwards the
    working directory (the repository's during the run), the environment, the stop signals' handlers and flag, torch's
    thread count and the logging set-up are as before.
    Returns what ``run_nash`` returns (exit code, stdout, stderr)."""
    import contextlib
    import io
    import logging
    import signal

    from nash_ds import cli, stop

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_handlers = {sig: signal.getsignal(sig) for sig in stop.SIGNALS}
    saved_stop, threads = dict(stop._STATE), torch.get_num_threads()
    saved_logger = logging.getLogger("nash_ds")
    saved_log = (list(saved_logger.handlers), saved_logger.level, saved_logger.propagate)
    argv = [stage, *overrides]
    out, err = io.StringIO(), io.StringIO()
    try:
        run_env = {k: v for k, v in env(**(extra_env or {})).items() if k not in LAUNCHER_ENV}
        os.environ.clear()
        os.environ.update(run_env)
        stop._STATE.update(requested=False, signal=None)
        os.chdir(REPO)  # as run_nash's subprocess: relative paths (ds_configs/, nash_ds/demo/) from the repository
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as e:  # argparse
                code = e.code
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for sig, handler in saved_handlers.items():
            signal.signal(sig, handler)
        stop._STATE.clear()
        stop._STATE.update(saved_stop)
        torch.set_num_threads(threads)
        saved_logger.handlers[:] = saved_log[0]
        saved_logger.setLevel(saved_log[1])
        saved_logger.propagate = saved_log[2]
    r = subprocess.CompletedProcess(["run.py", *argv], code, out.getvalue(), err.getvalue())
    if check and r.returncode != 0:
        raise AssertionError(f"run.py {' '.join(argv)} (in process) exited {r.returncode}\n--- stdout\n"
                             f"{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-6000:]}")
    return r


def load_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted(Path(model_dir).glob("*.safetensors"))
    assert files, f"no safetensors in {model_dir}"
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def scalars(tb_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one TensorBoard scalar."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


class RunsCode:
    """Pickles to a call of ``fn(arg)`` (``os.system``, ``builtins.exec``): what a crafted checkpoint does."""

    def __init__(self, fn, arg: str):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


def write_crafted_checkpoint(ckpt_dir: Path, marker: Path, *, how: str = "system", tag: str = "step-0000001",
                             method: str = "finetune", zero_stage: int = 0) -> Path:
    """A complete-looking checkpoint whose model-states pickle would create ``marker`` if unpickled unsafely."""
    import builtins
    import json

    payload = (RunsCode(os.system, f"touch {marker}") if how == "system"
               else RunsCode(builtins.exec, f"open({str(marker)!r}, 'w').close()"))
    root = Path(ckpt_dir) / tag
    root.mkdir(parents=True, exist_ok=True)
    name = "mp_rank_00_model_states.pt" if zero_stage == 0 else "zero_pp_rank_0_mp_rank_00_model_states.pt"
    torch.save({"module": payload, "buffer_names": [], "param_shapes": []}, root / name)
    if zero_stage:
        torch.save({"optimizer_state_dict": payload}, root / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (root / "COMPLETE").write_text(json.dumps({"step": 1, "best": {}, "world_size": 1, "zero_stage": zero_stage,
                                               "method": method}))
    return root
