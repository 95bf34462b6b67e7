"""Everything distributed lives here: process group, ranks, DeepSpeed engines, ZeRO gathering.

Launchers (``deepspeed``, ``torchrun``, ``launch/srun_task.sh`` under Slurm) set RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; plain ``python run.py`` is a world of
one. DeepSpeed picks NCCL on GPUs and gloo on its CPU accelerator.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist

from nash_ds import compat
from nash_ds.errors import Preempted, RankFailedError, UserError

REPO_DIR = Path(__file__).resolve().parent.parent
LOCAL_SIZE_VARS = ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", "OMPI_COMM_WORLD_LOCAL_SIZE")
"""Ranks on this node, as torchrun / launch/srun_task.sh, DeepSpeed's launcher, Slurm, Open MPI set them."""

log = logging.getLogger(__name__)


def free_port() -> int:
    """A free TCP port on the loopback interface (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ranks_on_node(env: dict | None = None) -> int:
    """How many ranks share this node, from the launcher's variables (1 when none says)."""
    env = os.environ if env is None else env
    for name in LOCAL_SIZE_VARS:
        value = env.get(name, "").split("(")[0]  # Slurm may write "2(x3)"
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def threads_per_rank(env: dict | None = None) -> tuple[int | None, str]:
    """(torch intra-op threads for this rank, why): the cores this process may use divided by the ranks on
    the node, at least 1; None when the user set ``OMP_NUM_THREADS`` (then it is theirs)."""
    env = os.environ if env is None else env
    if env.get("OMP_NUM_THREADS"):
        return None, f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']} set by the user"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    world = env.get("WORLD_SIZE", "")
    ranks = min(ranks_on_node(env), int(world)) if world.isdigit() and int(world) > 0 else ranks_on_node(env)
    return max(1, cores // ranks), f"{cores} cores / {ranks} rank(s) on this node"


def set_threads_per_rank() -> None:
    """Set torch's intra-op threads once per process (``threads_per_rank``); without it every rank of a
    multi-rank CPU job runs as many OpenMP threads as the node has cores and they stall each other
    (DeepSpeed's launcher sets OMP_NUM_THREADS only with --bind_cores_to_rank)."""
    threads, why = threads_per_rank()
    if threads is not None:
        torch.set_num_threads(threads)
    log.info("torch threads per rank: %d (%s)", torch.get_num_threads(), why)


def init_distributed() -> None:
    """Create the process group once (a world of one when no launcher set the environment)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        return
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    set_threads_per_rank()
    compat.silence_deepspeed_all_gather_deprecation()
    import deepspeed

    if not torch.cuda.is_available():
        compat.return_freed_memory_to_os()
    timeout = datetime.timedelta(seconds=float(os.environ.get("NASH_DIST_TIMEOUT_S", "1800")))
    deepspeed.init_distributed(auto_mpi_discovery=False, timeout=timeout, verbose=False)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    else:
        barrier()  # every rank has mapped every buffer: the names can go
        compat.unlink_shm_allreduce_buffer(rank())


def shutdown(*, wait_for_others: bool = True) -> None:
    """Tear the process group down before the interpreter exits: gloo / shared-memory threads left
    running at exit can abort a rank ("terminate called without an active exception"). After an
    error that other ranks may not share, skip the final barrier (it could pair with another collective)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        import gc

        # Engines left only in reference cycles (their hooks on the modules) are freed now, so the process groups
        # they hold die with destroy_process_group below, not in interpreter teardown (cli.exit_process covers the rest).
        gc.collect()
        try:
            if wait_for_others:
                barrier()
        finally:
            _destroy_process_group()


def _destroy_process_group() -> None:
    """Through DeepSpeed when it made the group: ``deepspeed.comm.destroy_process_group`` also drops DeepSpeed's
    cached groups, which a later run in the same process (the tests' in-process runs) would otherwise reuse."""
    import sys

    ds_comm = sys.modules.get("deepspeed.comm")
    if ds_comm is not None and ds_comm.is_initialized():
        ds_comm.destroy_process_group()
    else:
        torch_dist.destroy_process_group()


def rank() -> int:
    return torch_dist.get_rank() if torch_dist.is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return torch_dist.get_world_size() if torch_dist.is_initialized() else 1


def is_rank_zero() -> bool:
    return rank() == 0


def barrier() -> None:
    if torch_dist.is_initialized() and world_size() > 1:
        torch_dist.barrier()


def device() -> torch.device:
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (one small all-reduce)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device())
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sum_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """Element-wise sum over ranks of a dict of floats with the same keys on every rank (collective)."""
    if world_size() == 1 or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device())
    torch_dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` as a list on rank 0 (None elsewhere)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size() if is_rank_zero() else None
    torch_dist.gather_object(obj, out, dst=0)
    return out


def raise_if_any_rank(error: Exception | None) -> None:
    """Collective: if any rank failed, raise on every rank (rank 0's message first)."""
    mine = None if error is None else (isinstance(error, Preempted), str(error))
    msgs = [mine]
    if world_size() > 1:
        msgs = [None] * world_size()
        torch_dist.all_gather_object(msgs, mine)
    failed = [m for m in msgs if m is not None]
    if error is not None:
        raise error
    if failed:
        preempted, text = failed[0]
        raise (Preempted(text) if preempted else RankFailedError(f"another rank failed: {text}"))


def on_rank_zero(fn):
    """Run ``fn()`` on rank 0 while the other ranks wait; its result on every rank. A failure on rank 0
    is raised on every rank (``RankFailedError`` on the others), so none waits forever."""
    error, result = None, None
    if is_rank_zero():
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error = e
    raise_if_any_rank(error)
    return broadcast_object(result)


# --------------------------------------------------------------------------- DeepSpeed config


def load_ds_config(path: str) -> dict:
    """Read a DeepSpeed JSON, relative to the working directory or the repository."""
    p = Path(path)
    if not p.is_file() and not p.is_absolute():
        p = REPO_DIR / path
    if not p.is_file():
        names = sorted(x.name for x in (REPO_DIR / "ds_configs").glob("*.json"))
        raise UserError(f"train.ds_config {path} does not exist; shipped configs: {', '.join(names)}")
    try:
        ds = json.loads(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"train.ds_config {p} is not UTF-8 text (byte {e.start}: {e.reason})") from e
    except json.JSONDecodeError as e:
        raise UserError(f"train.ds_config {p} is not valid JSON: {e}") from e
    except OSError as e:
        raise UserError(f"train.ds_config {p} cannot be read: {e.strerror or e}") from e
    check_ds_config_shape(ds, where=f"train.ds_config {p}")
    return ds


def check_ds_config_shape(ds: Any, *, where: str) -> None:
    """The shape nash-ds reads from a DeepSpeed JSON: an object; bf16 / fp16 / zero_optimization objects;
    a ZeRO stage of 0-3; offload sections as objects. DeepSpeed itself checks the rest."""
    if not isinstance(ds, dict):  # the user's file, not a caller's type error
        example = '{"zero_optimization": {"stage": 2}, ...}'
        raise UserError(f"{where} must hold a JSON object ({example}), got a {type(ds).__name__}")  # noqa: TRY004
    for key, example in (("bf16", '{"enabled": true}'), ("fp16", '{"enabled": true}'),
                         ("zero_optimization", '{"stage": 2}')):
        if key in ds and not isinstance(ds[key], dict):
            raise UserError(f"{where}: \"{key}\" must be an object such as {example}, got {json.dumps(ds[key])}")
    zero = ds.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise UserError(f"{where}: zero_optimization.stage must be 0, 1, 2 or 3, got {json.dumps(stage)}")
    for key in ("offload_optimizer", "offload_param"):
        if zero.get(key) is not None and not isinstance(zero[key], dict):
            raise UserError(f"{where}: zero_optimization.{key} must be an object such as {{\"device\": \"cpu\"}}, "
                            f"got {json.dumps(zero[key])}")


def resolve_ds_config(ds: dict, *, micro_batch_size: int, grad_accum: int, grad_clip: float,
                      num_ranks: int, where: str = "DeepSpeed config") -> dict:
    """Fill "auto" batch fields from the run config; refuse disagreeing numbers, naming them all, and a precision
    this device cannot run (``where`` names the file in that message)."""
    ds = copy.deepcopy(ds)
    want = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * num_ranks,
    }
    for key, value in want.items():
        have = ds.get(key, "auto")
        if have == "auto":
            ds[key] = value
        elif have != value:
            raise UserError(
                f"DeepSpeed config sets {key}={have} but the run gives {value} "
                f"(train.micro_batch_size={micro_batch_size} x train.grad_accum={grad_accum} x "
                f"world_size={num_ranks}); set it to \"auto\" or make them agree")
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = grad_clip
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise UserError(f"DeepSpeed config has '{key}': nash-ds builds its own optimizer (param groups "
                            "for model, masks and lambdas) and scheduler; remove the section")
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    check_precision_runs_here(ds, where=where)
    check_with_deepspeed(ds)
    return ds


def check_precision_runs_here(ds: dict, *, where: str) -> None:
    """Refuse, before anything is built, an fp16 / bf16 config this device cannot train in: on CPU nash-ds trains
    in fp32 (DeepSpeed's CPU accelerator takes fp16 only on AVX-512 FP16 / AMX CPUs, and CPU bf16 is slow and
    untested here); on a GPU without bf16 (before Ampere), fp16 or fp32."""
    enabled = [key for key in ("bf16", "fp16") if ds.get(key, {}).get("enabled")]
    if not enabled:
        return
    if not torch.cuda.is_available():
        raise UserError(f"{where} enables {enabled[0]} but no GPU is present; on CPU use an fp32 config such as "
                        "ds_configs/zero2_fp32.json")
    if "bf16" in enabled and not torch.cuda.is_bf16_supported():
        raise UserError(f"{where} enables bf16 but this GPU ({torch.cuda.get_device_name()}) cannot run it; use an "
                        "fp16 config or an fp32 one such as ds_configs/zero2_fp32.json")


def check_with_deepspeed(ds: dict) -> None:
    """DeepSpeed's own parser on the resolved config, so that a value it refuses (a bucket size in words, an unknown
    ZeRO key) stops the run before anything is written, not at ``deepspeed.initialize``."""
    from deepspeed.runtime.config import DeepSpeedConfig

    clip = ds.get("gradient_clipping")
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip < 0:
        raise UserError(f"train.ds_config: gradient_clipping must be a number >= 0 or \"auto\", got {clip!r}")
    probe = {k: v for k, v in copy.deepcopy(ds).items() if k != "train_batch_size"}  # world size checked above
    try:
        DeepSpeedConfig(probe)
    except Exception as e:  # pydantic's ValidationError, DeepSpeed's asserts: the config is the user's
        reason = " ".join(line.strip() for line in str(e).splitlines() if "further information" not in line)
        raise UserError(f"train.ds_config: DeepSpeed refuses it: {reason[:400]}") from e


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def offloads(ds: dict, part: str) -> bool:
    """Whether the ZeRO config moves ``part`` ("optimizer" or "param") off the accelerator (cpu, nvme)."""
    target = ds.get("zero_optimization", {}).get(f"offload_{part}") or {}
    return target.get("device", "none") in ("cpu", "nvme")


def compute_dtype(ds: dict) -> torch.dtype:
    if ds.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


def initialize(model: torch.nn.Module, *, optimizer, lr_scheduler, ds: dict):
    """deepspeed.initialize with a client optimizer and scheduler; returns the engine."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                           config=ds, dist_init_required=False)
    if zero_stage(ds) == 3 and compute_dtype(ds) == torch.float32:
        compat.share_fp32_master(engine)
    return engine


def inference_engine(model: torch.nn.Module, *, ds: dict):
    """A frozen model (the teacher): partitioned by ZeRO-3 when the student is, else replicated."""
    import deepspeed

    model.eval().requires_grad_(False)
    if zero_stage(ds) != 3:
        return model.to(device=device(), dtype=compute_dtype(ds))
    cfg = {k: ds[k] for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                              "train_batch_size", "bf16", "fp16") if k in ds}
    cfg["zero_optimization"] = {k: v for k, v in ds["zero_optimization"].items()
                                if not k.startswith("offload_optimizer")}
    engine, _, _, _ = deepspeed.initialize(model=model, config=cfg, dist_init_required=False)
    engine.eval()
    return engine.module


@contextmanager
def zero3_init_context(ds: dict, *, enabled: bool = True):
    """Build HF models partitioned from the start under ZeRO-3, else (or when not ``enabled``) no-op.

    Inside the block transformers sees ZeRO-3 (HfDeepSpeedConfig): ``from_config`` builds under
    ``deepspeed.zero.Init`` and ``from_pretrained`` loads each weight straight into its partition,
    so no rank ever holds the full model. Scoped: later code sees no global DeepSpeed config.
    """
    if zero_stage(ds) != 3 or not enabled:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    hf = HfDeepSpeedConfig(ds)  # transformers holds a weak reference to it
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del hf


def is_partitioned(model: torch.nn.Module) -> bool:
    """Whether ZeRO-3 has partitioned ``model``'s parameters (each rank holds a shard)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def full_shape(p: torch.Tensor) -> torch.Size:
    """The shape of a parameter, also when ZeRO-3 holds only its partition."""
    return getattr(p, "ds_shape", p.shape)


@contextmanager
def gathered(params, *, modifier_rank: int | None = None):
    """Full parameters inside the block under ZeRO-3 (collective: every rank must enter)."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield
