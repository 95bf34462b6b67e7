"""The memory model behind ``run.py estimate``: per-rank memory of a finetune or prune run, and the
ds_config that fits.

The model is built on the meta device (no weights, no download for the named shapes), so a
T5-XL estimate takes a second. Model states (weights, gradients, optimizer) follow DeepSpeed's
own estimators where they apply (bf16/fp16 on GPUs: ``estimate_zero2_model_states_mem_needs`` and
``estimate_zero3_model_states_mem_needs``, the functions behind their ``*_all_cold`` tables); this
module adds what they leave out: fp32 training (CPU), the frozen teacher, masks, Lagrange
multipliers and distillation projections, communication buckets, activations (with and without
gradient checkpointing), optimizer-step temporaries and a fixed runtime overhead. Activations are
rough (+-50%); model states are exact up to allocator slack.

    python run.py estimate estimate.model=t5-xl estimate.stage=prune estimate.world_size=16 \\
        estimate.memory_gb=80 data.max_source_length=512 data.max_target_length=128
"""

from __future__ import annotations

import io
import math
import re
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nash_ds.errors import UserError

if TYPE_CHECKING:
    import torch

    from nash_ds.config import EstimateConfig

GiB = 2**30


def model_config(name: str):
    """A transformers config for a named shape, preset, local directory or (cached) hub name."""
    from nash_ds.models import config_of

    try:
        return config_of(name)
    except ValueError as e:
        raise UserError(f"estimate.model {e}") from e


def meta_model(config) -> torch.nn.Module:
    """The stock model of ``config`` on the meta device (no memory), holding what its checkpoint holds."""
    import torch

    from nash_ds.models import family_for

    with torch.device("meta"):
        return family_for(config).from_config(config)


def param_stats(model: torch.nn.Module) -> tuple[int, int]:
    """(total params as ``models.count_params`` counts them, largest single module's own params)."""
    from nash_ds.models import count_params, family_for

    largest = max(sum(int(getattr(p, "ds_numel", p.numel())) for p in m.parameters(recurse=False))
                  for m in model.modules())
    return count_params(model, family_for(model.config))["total"], largest


# ---------------------------------------------------------------------------------------- DeepSpeed config


@dataclass
class Plan:
    """The parts of a ds_config that decide memory."""

    name: str
    stage: int
    dtype_bytes: int
    """2 (bf16/fp16) or 4 (fp32)."""
    offload_optimizer: bool = False
    offload_param: bool = False
    reduce_bucket: float = 5e8
    allgather_bucket: float = 5e8
    prefetch_bucket: float = 5e7
    max_live: float = 1e9
    persistence: float = 1e5
    sub_group: float = 1e9
    overlap_comm: bool = False

    @classmethod
    def from_ds(cls, name: str, ds: dict) -> Plan:
        from nash_ds import dist

        z = ds.get("zero_optimization", {})
        stage = dist.zero_stage(ds)
        return cls(name=name, stage=stage, dtype_bytes=dist.compute_dtype(ds).itemsize,
                   offload_optimizer=dist.offloads(ds, "optimizer"), offload_param=dist.offloads(ds, "param"),
                   reduce_bucket=float(z.get("reduce_bucket_size", 5e8)),
                   allgather_bucket=float(z.get("allgather_bucket_size", 5e8)),
                   prefetch_bucket=float(z.get("stage3_prefetch_bucket_size", 5e7)),
                   max_live=float(z.get("stage3_max_live_parameters", 1e9)),
                   persistence=float(z.get("stage3_param_persistence_threshold", 1e5)),
                   sub_group=float(z.get("sub_group_size", 1e9)),
                   overlap_comm=bool(z.get("overlap_comm", stage == 3)))


GPU_CANDIDATES = ("zero2_bf16.json", "zero3_bf16.json", "zero3_bf16_xl.json", "zero2_bf16_offload.json",
                  "zero3_bf16_offload_optim.json", "zero3_bf16_offload.json")
"""Cheapest (least communication / host traffic) first."""
CPU_CANDIDATES = ("zero0_fp32.json", "zero2_fp32.json", "zero3_fp32.json")


def _plans(est: EstimateConfig, extra: str | None) -> list[Plan]:
    from nash_ds import dist

    names = list(est.candidates) or list(GPU_CANDIDATES if est.device == "gpu" else CPU_CANDIDATES)
    if extra and Path(extra).name not in {Path(n).name for n in names}:
        names.append(extra)
    plans = []
    for n in names:
        path = n if ("/" in n or Path(n).is_file()) else f"ds_configs/{n}"
        plans.append(Plan.from_ds(Path(n).name.removesuffix(".json"), dist.load_ds_config(path)))
    return plans


# ---------------------------------------------------------------------------------------- DeepSpeed's numbers


def deepspeed_model_states(total_params: int, largest_layer_params: int, *, stage: int, world_size: int,
                           ranks_per_node: int, offload_optimizer: bool = False, offload_param: bool = False,
                           zero_init: bool = True) -> tuple[int, int]:
    """(per-GPU bytes, per-node CPU bytes) from DeepSpeed's own estimator (mixed precision, Adam).

    The same numbers ``estimate_zero{2,3}_model_states_mem_needs_all_cold`` print; the CPU figure
    includes DeepSpeed's ``additional_buffer_factor`` of 1.5.
    """
    num_nodes = max(1, math.ceil(world_size / ranks_per_node))
    per_node = min(ranks_per_node, world_size)
    if stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total_params, largest_layer_params, num_gpus_per_node=per_node, num_nodes=num_nodes,
            cpu_offload=offload_optimizer, cpu_offload_params=offload_param, zero_init=zero_init)
        return int(gpu), int(cpu)
    if stage in (1, 2):
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        cpu, gpu = estimate_zero2_model_states_mem_needs(total_params, num_gpus_per_node=per_node,
                                                         num_nodes=num_nodes, cpu_offload=offload_optimizer)
        return int(gpu), int(cpu)
    return 18 * total_params, 0  # no ZeRO: 2 (16-bit params) + 16 (grads, master, Adam), replicated


def deepspeed_cold_table(total_params: int, largest_layer_params: int, *, stage: int, num_gpus_per_node: int,
                         num_nodes: int) -> list[tuple[float, float, str]]:
    """Rows (per CPU GiB, per GPU GiB, options) printed by DeepSpeed's ``*_all_cold`` estimator."""
    buf = io.StringIO()
    with redirect_stdout(buf):
        if stage == 3:
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold

            estimate_zero3_model_states_mem_needs_all_cold(total_params, largest_layer_params,
                                                           num_gpus_per_node=num_gpus_per_node, num_nodes=num_nodes)
        else:
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

            estimate_zero2_model_states_mem_needs_all_cold(total_params, num_gpus_per_node=num_gpus_per_node,
                                                           num_nodes=num_nodes)
    rows = []
    for line in buf.getvalue().splitlines():
        m = re.match(r"\s*([\d.]+)GB \|\s*([\d.]+)GB \| (.*)", line)
        if m:
            rows.append((float(m.group(1)), float(m.group(2)), m.group(3).strip()))
    return rows


# ---------------------------------------------------------------------------------------- our parts


FP32_ZERO3_MASTER_BYTES = 0
"""Bytes per parameter (over N ranks) of the fp32 master clone DeepSpeed 0.19.8 keeps in fp32 ZeRO-3
(0: ``nash_ds.dist.initialize`` lets the optimizer update the partitions in place, share_fp32_master)."""


def model_states(params: int, largest: int, plan: Plan, *, world_size: int, ranks_per_node: int,
                 zero_init: bool = True) -> dict[str, int]:
    """Per-rank bytes of trainable weights, gradients and Adam state, and host bytes per node.

    bf16/fp16: DeepSpeed's estimator. fp32 (CPU): our count from DeepSpeed 0.19.8's code: ZeRO-0
    16 B/param replicated; ZeRO-1/2 4 (replicated weights) + 16/N (fp32 master copy, gradient
    partition, Adam); ZeRO-3 20/N (partition, its master clone, gradient partition, Adam: DeepSpeed
    means to skip the clone for fp32 but its device test compares a torch.device with a str and
    never matches; ``FP32_ZERO3_MASTER_BYTES``) plus the largest layer gathered.
    """
    n = world_size
    if plan.dtype_bytes == 2:
        gpu, cpu = deepspeed_model_states(params, largest, stage=plan.stage, world_size=n,
                                          ranks_per_node=ranks_per_node, offload_optimizer=plan.offload_optimizer,
                                          offload_param=plan.offload_param, zero_init=zero_init)
        return {"device": gpu, "host_per_node": cpu, "source": "deepspeed"}
    if plan.stage == 0:
        dev = 16 * params
    elif plan.stage in (1, 2):
        dev = 4 * params + 16 * params // n
    else:
        dev = (16 + FP32_ZERO3_MASTER_BYTES) * params // n + 4 * largest
    return {"device": int(dev), "host_per_node": 0, "source": "nash-ds (fp32)"}


def frozen_states(params: int, largest: int, plan: Plan, *, world_size: int) -> int:
    """Per-rank bytes of a frozen model (the teacher) in the compute dtype: partitioned under ZeRO-3
    (its own inference engine, nothing offloaded), else replicated."""
    if plan.stage == 3:
        return plan.dtype_bytes * ((0 if plan.offload_param else params // world_size) + largest)
    return plan.dtype_bytes * params


def buffers(params: int, block: int, plan: Plan, *, world_size: int) -> int:
    """Communication buckets, ZeRO-3's gathered working set (about two blocks, capped by
    stage3_max_live_parameters, plus the prefetch bucket) and ZeRO-0's all-reduce copy, bytes per rank."""
    b = plan.dtype_bytes
    reduce = plan.reduce_bucket * b * (2 if plan.overlap_comm else 1)
    if plan.stage in (1, 2):
        return int(reduce + plan.allgather_bucket * b)
    if plan.stage == 3:
        live = min(plan.max_live, 2 * block) + min(plan.prefetch_bucket, params)
        return int(reduce + live * b)
    # ZeRO-0: DeepSpeed all-reduces through flat buckets of a fixed 5e8 elements (engine.py's
    # MEMORY_OPT_ALLREDUCE_SIZE, not configurable), even on one rank: a copy of the gradients
    return int(min(5e8, params) * b)


def optimizer_step_temporaries(params: int, largest: int, plan: Plan, *, world_size: int) -> int:
    """torch AdamW's single-tensor step allocates ~2 tensors the size of the stepped tensor (sqrt and
    division), and ZeRO-3 flattens each sub-group's gradient once more: bounded by sub_group_size."""
    if plan.offload_optimizer:
        return 0  # on the host
    if plan.stage == 0:
        stepped = largest
    elif plan.stage in (1, 2):
        stepped = params // world_size
    else:
        stepped = min(int(plan.sub_group), params // world_size)
    extra = 1 if plan.stage == 3 else 0
    return 4 * stepped * (2 + extra)


@dataclass
class Shape:
    """Activation-relevant sizes of one encoder-decoder model."""

    d_model: int
    attn: int
    """heads * head_dim"""
    heads: int
    d_ff: int
    gated: bool
    enc_layers: int
    dec_layers: int
    vocab: int

    @classmethod
    def of(cls, model) -> Shape:
        from nash_ds.models import family_for

        fam, c = family_for(model.config), model.config
        return cls(d_model=fam.d_model(c), attn=fam.num_heads(c, "encoder") * fam.head_dim(c, "encoder"),
                   heads=fam.num_heads(c, "encoder"), d_ff=fam.d_ff(c, "encoder"),
                   gated=fam.num_ffn_in_projs(c) == 2, enc_layers=fam.num_layers(c, "encoder"),
                   dec_layers=fam.num_layers(c, "decoder"), vocab=int(c.vocab_size))


def _layer_elems(s: Shape, *, q_len: int, kv_len: int, cross_len: int | None) -> int:
    """Elements one block stores for backward, per sample (rough: inputs of every matmul, norms,
    activation and dropout outputs, attention probabilities before and after dropout)."""
    d, a, f = s.d_model, s.attn, s.d_ff
    self_attn = q_len * (3 * d + 4 * a) + 2 * s.heads * q_len * kv_len
    cross = 0 if cross_len is None else q_len * (3 * d + 2 * a) + 2 * cross_len * a + 2 * s.heads * q_len * cross_len
    ffn = q_len * (3 * d + (5 if s.gated else 3) * f)
    return self_attn + cross + ffn


def activations(s: Shape, *, batch: int, src: int, tgt: int, dtype_bytes: int, checkpointing: bool) -> int:
    """Rough peak activation bytes of one training micro-batch (forward stored + backward working set)."""
    enc = _layer_elems(s, q_len=src, kv_len=src, cross_len=None)
    dec = _layer_elems(s, q_len=tgt, kv_len=tgt, cross_len=src)
    if checkpointing:  # block inputs kept; one block recomputed at a time
        stored = s.enc_layers * src * s.d_model + s.dec_layers * tgt * s.d_model + max(enc, dec)
    else:
        stored = s.enc_layers * enc + s.dec_layers * dec
    working = 2 * max(enc, dec)  # gradients of one block's activations in backward
    logits = tgt * s.vocab * (dtype_bytes + 3 * 4)  # logits, fp32 log-softmax, its grad and the logits' grad
    return int(batch * ((stored + working) * dtype_bytes + logits))


def teacher_activations(s: Shape, *, batch: int, src: int, tgt: int, dtype_bytes: int, distill: bool) -> int:
    """no_grad forward of the teacher: one block at a time, plus what distillation keeps (every block's
    output and the logits) and the KD softmaxes."""
    one = max(_layer_elems(s, q_len=src, kv_len=src, cross_len=None),
              _layer_elems(s, q_len=tgt, kv_len=tgt, cross_len=src)) * dtype_bytes
    kept = (s.enc_layers * src + s.dec_layers * tgt) * s.d_model * dtype_bytes if distill else 0
    kd = tgt * s.vocab * (dtype_bytes + 3 * 4) if distill else tgt * s.vocab * dtype_bytes
    return int(batch * (one + kept + kd))


RUNTIME_BYTES = {"gpu": int(1.5 * GiB), "cpu": int(0.7 * GiB)}
"""Fixed per-rank overhead: CUDA context, NCCL and allocator slack (GPU); interpreter, torch,
transformers, DeepSpeed, data and gloo / shared-memory buffers (CPU: 0.4 GiB before the model, ~0.6-0.7 with
DeepSpeed's buffers, measured here)."""


# ---------------------------------------------------------------------------------------- the estimate


@dataclass
class Models:
    """Sizes of what one run holds."""

    student: torch.nn.Module
    teacher: torch.nn.Module | None
    trainable: int
    """student params + masks + lambdas + distillation projections"""
    largest: int
    masks: int
    """log_alpha + lambdas + projections (the part DeepSpeed's estimator cannot see)"""
    block: int = 0
    """largest encoder / decoder block"""
    teacher_params: int = 0
    teacher_largest: int = 0
    distill: bool = False


def _largest_block(model, family) -> int:
    return max(sum(p.numel() for p in b.parameters()) for s in ("encoder", "decoder") for b in family.layers(model, s))


def build_models(cfg, est: EstimateConfig) -> Models:
    """Meta-device student (and teacher for prune) with the decoder cut and masks of ``cfg.prune``."""
    from nash_ds.models import family_for, kept_decoder_layers

    if est.stage not in ("finetune", "prune"):
        raise UserError(f"estimate.stage must be finetune or prune, got {est.stage!r}")
    name = est.model or (cfg.prune.teacher if est.stage == "prune" else cfg.model.name_or_path)
    teacher = meta_model(model_config(name))
    family = family_for(teacher.config)
    if est.stage == "finetune":
        total, largest = param_stats(teacher)
        return Models(student=teacher, teacher=None, trainable=total, largest=largest, masks=0,
                      block=_largest_block(teacher, family))
    p = cfg.prune
    kept = kept_decoder_layers(p, family.num_layers(teacher.config, "decoder"))
    student = family.make_student(teacher, kept)
    s_total, s_largest = param_stats(student)
    extra = 2 * (family.d_model(student.config) ** 2 + family.d_model(student.config))  # enc/dec projections
    if p.method in ("nash", "cofi"):
        from nash_ds.masks import MaskSet

        extra += sum(x.numel() for x in MaskSet(family, student.config, method=p.method).parameters()) + 2
    t_total, t_largest = param_stats(teacher)
    d = cfg.distill
    return Models(student=student, teacher=teacher, trainable=s_total + extra, largest=s_largest, masks=extra,
                  block=_largest_block(student, family), teacher_params=t_total, teacher_largest=t_largest, distill=(d.kd_weight > 0 or d.hidden_weight > 0))


def estimate_plan(models: Models, plan: Plan, *, est: EstimateConfig, batch: int, src: int, tgt: int,
                  checkpointing: bool) -> dict[str, Any]:
    """Per-rank bytes by component for one ds_config, and whether it fits ``est.memory_gb``."""
    n = est.world_size
    rpn = min(est.ranks_per_node, n)
    states = model_states(models.trainable, models.largest, plan, world_size=n, ranks_per_node=rpn,
                          zero_init=est.zero_init)
    ds_only = model_states(models.trainable - models.masks, models.largest, plan, world_size=n,
                           ranks_per_node=rpn, zero_init=est.zero_init)
    shape = Shape.of(models.student)
    act = {gc: activations(shape, batch=batch, src=src, tgt=tgt, dtype_bytes=plan.dtype_bytes, checkpointing=gc)
           for gc in (False, True)}
    teacher = teacher_act = 0
    if models.teacher is not None:
        teacher = frozen_states(models.teacher_params, models.teacher_largest, plan, world_size=n)
        teacher_act = teacher_activations(Shape.of(models.teacher), batch=batch, src=src, tgt=tgt,
                                          dtype_bytes=plan.dtype_bytes, distill=models.distill)
    rows: dict[str, int] = {
        "student states": ds_only["device"],
        "masks+lambdas+proj": states["device"] - ds_only["device"],
        "teacher": teacher,
        "buffers": buffers(models.trainable, models.block, plan, world_size=n),
        "optimizer step": optimizer_step_temporaries(models.trainable, models.largest, plan, world_size=n),
        "activations": act[checkpointing] + teacher_act,
        "runtime": RUNTIME_BYTES[est.device],
    }
    total = sum(rows.values())
    other = total - act[checkpointing] + act[not checkpointing]
    # start-up: without zero.Init every rank first materialises the full models (fp32, host memory)
    startup_host = 0
    if plan.stage != 3 or not est.zero_init:
        startup_host = rpn * 4 * (models.trainable + models.teacher_params)
    if est.device == "cpu":  # host memory is the device: the start-up copy counts against the rank
        total = max(total, startup_host // rpn + RUNTIME_BYTES["cpu"])
        other = max(other, startup_host // rpn + RUNTIME_BYTES["cpu"])
    budget = est.headroom * est.memory_gb * GiB
    fits = total <= budget
    host = states["host_per_node"]
    if est.host_memory_gb is not None and est.device == "gpu":
        fits = fits and host + startup_host <= est.headroom * est.host_memory_gb * GiB
    return {"config": plan.name, "rows": rows, "total": int(total), "fits": bool(fits), "host_per_node": int(host),
            "startup_host_per_node": int(startup_host), "total_other_checkpointing": int(other),
            "states_source": states["source"]}


def estimate(cfg, est: EstimateConfig | None = None) -> dict[str, Any]:
    """Memory per rank of every candidate ds_config and the recommended one (the first that fits).

    ``cfg`` is a RunConfig: batch size, sequence lengths, gradient checkpointing, the prune settings
    and train.ds_config (always compared) come from it.
    """
    est = est or cfg.estimate
    _validate(est)
    models = build_models(cfg, est)
    t, d = cfg.train, cfg.data
    plans = _plans(est, t.ds_config)
    low = {p.name for p in plans if p.dtype_bytes == 2}
    if est.device == "cpu" and low:
        raise UserError(f"estimate.device=cpu but {sorted(low)} are bf16/fp16 configs (GPU only)")
    results = [estimate_plan(models, p, est=est, batch=t.micro_batch_size, src=d.max_source_length,
                             tgt=d.max_target_length, checkpointing=t.gradient_checkpointing) for p in plans]
    if est.world_size == 1:  # ZeRO shards nothing on one rank; ZeRO-0 is the honest 1-rank plan
        results = [r for r in results if r["config"] != "zero2_fp32"] or results
    chosen = next((r for r in results if r["fits"]), None)
    advice = []
    if chosen is None:
        if not t.gradient_checkpointing:
            alt = [r for r in results if r["total_other_checkpointing"] <= est.headroom * est.memory_gb * GiB]
            if alt:
                advice.append(f"set train.gradient_checkpointing=true: {alt[0]['config']} then needs "
                              f"{alt[0]['total_other_checkpointing'] / GiB:.1f} GiB per rank")
        advice.append("or lower train.micro_batch_size / the sequence lengths, or use more ranks")
    elif chosen["rows"]["activations"] > 0.5 * chosen["total"] and not t.gradient_checkpointing:
        advice.append("(optional) activations dominate: train.gradient_checkpointing=true frees "
                      f"{(chosen['total'] - chosen['total_other_checkpointing']) / GiB:.1f} GiB per rank "
                      "for ~30% more compute (larger batches, longer inputs)")
    return {"model": est.model or (cfg.prune.teacher if est.stage == "prune" else cfg.model.name_or_path),
            "stage": est.stage, "world_size": est.world_size, "ranks_per_node": min(est.ranks_per_node, est.world_size),
            "device": est.device, "memory_gb": est.memory_gb, "student_params": models.trainable - models.masks,
            "masks_params": models.masks, "teacher_params": models.teacher_params,
            "largest_layer_params": models.largest, "plans": results,
            "recommended": None if chosen is None else f"ds_configs/{chosen['config']}.json", "advice": advice}


def _validate(est: EstimateConfig) -> None:
    if est.world_size < 1:
        raise UserError(f"estimate.world_size must be >= 1, got {est.world_size}")
    if est.ranks_per_node < 1:
        raise UserError(f"estimate.ranks_per_node must be >= 1, got {est.ranks_per_node}")
    if est.device not in ("gpu", "cpu"):
        raise UserError(f"estimate.device must be gpu or cpu, got {est.device!r}")
    if est.memory_gb <= 0:
        raise UserError(f"estimate.memory_gb must be > 0, got {est.memory_gb}")
    if not 0 < est.headroom <= 1:
        raise UserError(f"estimate.headroom must be in (0, 1], got {est.headroom}")


def format_table(result: dict[str, Any]) -> str:
    """The estimate as a fixed-width table (GiB per rank), one column per ds_config."""
    plans = result["plans"]
    names = [p["config"] for p in plans]
    w = max(12, *(len(n) for n in names)) + 1
    lines = [f"{result['stage']} {result['model']}: student {result['student_params'] / 1e6:.0f}M params"
             + (f", masks+lambdas+proj {result['masks_params'] / 1e6:.2f}M, teacher {result['teacher_params'] / 1e6:.0f}M"
                if result["stage"] == "prune" else "")
             + f"; {result['world_size']} ranks ({result['ranks_per_node']} per node), {result['device']} "
             f"{result['memory_gb']:g} GiB per rank",
             "GiB per rank".ljust(22) + "".join(n.rjust(w) for n in names)]
    for key in plans[0]["rows"]:
        lines.append(key.ljust(22) + "".join(f"{p['rows'][key] / GiB:{w}.2f}" for p in plans))
    lines.append("total".ljust(22) + "".join(f"{p['total'] / GiB:{w}.2f}" for p in plans))
    lines.append("other checkpointing".ljust(22) + "".join(f"{p['total_other_checkpointing'] / GiB:{w}.2f}" for p in plans))
    if any(p["host_per_node"] for p in plans):
        lines.append("host/node (DeepSpeed)".ljust(22) + "".join(f"{p['host_per_node'] / GiB:{w}.1f}" for p in plans))
    lines.append("start-up host/node".ljust(22) + "".join(f"{p['startup_host_per_node'] / GiB:{w}.1f}" for p in plans))
    lines.append("fits".ljust(22) + "".join(("yes" if p["fits"] else "NO").rjust(w) for p in plans))
    lines.append(f"recommended: {result['recommended'] or 'none fits'}")
    lines.extend(f"advice: {a}" for a in result["advice"])
    lines.append("student states: DeepSpeed's estimator for bf16 (its *_all_cold figures), nash-ds's count for fp32; "
                 "activations are rough (+-50%)")
    return "\n".join(lines)
