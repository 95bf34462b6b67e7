"""The one DeepSpeed training loop, shared by ``finetune`` and ``prune``.

A *task* says what is trained (the module DeepSpeed wraps, its param groups, its loss, how to
generate and how to export); the trainer owns everything else: batching identical across world
sizes, schedule, evaluation with generation, best-checkpoint choice, resumable checkpoints,
preemption, TensorBoard and the progress bar.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from nash_ds import checkpoint as ckpt
from nash_ds import dist, stop
from nash_ds.config import RunConfig
from nash_ds.errors import Preempted, UserError
from nash_ds.log import Progress

log = logging.getLogger(__name__)


class Task(Protocol):
    """What one training stage trains; the trainer calls each method from one place."""

    module: torch.nn.Module
    method: str
    """Recorded in every checkpoint; a resume or a finalize of another method is refused."""

    def param_groups(self) -> list[dict]:
        """Optimizer groups; each has params, lr, weight_decay, name and schedule ("model" | "constant")."""

    def training_loss(self, engine, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss to back-propagate and scalars to log."""

    def after_optimizer_step(self, engine) -> None:
        """After every optimizer step, on every rank (the masks' clamp)."""

    def step_logs(self, engine, step: int) -> dict[str, Any]:
        """Extra scalars (and ``images``) to log at a logging step; collective."""

    def generation_model(self, engine):
        """The HF model used for eval generation."""

    def eval_context(self, engine):
        """Context for evaluation (deterministic masks); collective."""

    def eval_extras(self, engine) -> dict[str, float]:
        """Extra eval metrics (deterministic sparsity); collective."""

    def eligible_for_best(self, metrics: dict) -> bool:
        """Whether a checkpoint with these eval metrics may be chosen as best."""

    def export(self, state_dict: dict[str, torch.Tensor], out_dir: Path) -> None:
        """Rank 0: write the HF directory from a consolidated fp32 state dict of ``module``."""


def model_param_groups(model: torch.nn.Module, *, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups for model weights: no decay on biases and norms."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        ndim = len(dist.full_shape(p))  # ZeRO-3 partitions are 1-d placeholders
        (no_decay if ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "model", "schedule": "model"}]
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": "model_no_decay",
                       "schedule": "model"})
    return groups


# --------------------------------------------------------------------------- batching


def step_indices(num_examples: int, *, seed: int, step: int, global_batch: int) -> list[int]:
    """Example indices of optimizer step ``step``: the same for any split into ranks x accumulation.

    Each epoch is a seeded permutation; a global batch never straddles epochs (the tail that
    does not fill one is dropped).
    """
    check_train_size(num_examples, global_batch=global_batch)
    per_epoch = num_examples // global_batch
    epoch, within = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(num_examples, generator=g)
    return perm[within * global_batch:(within + 1) * global_batch].tolist()


def check_train_size(num_examples: int, *, global_batch: int) -> None:
    """At least one global batch of training examples (the stages check it before writing anything)."""
    if num_examples < global_batch:
        raise UserError(f"the training set has {num_examples} examples, fewer than one global batch "
                        f"({global_batch} = train.micro_batch_size x train.grad_accum x ranks); lower "
                        "train.micro_batch_size or train.grad_accum, or raise data.max_train_samples")


def micro_slice(indices: list[int], *, micro: int, rank: int, num_ranks: int, micro_step: int) -> list[int]:
    start = micro_step * micro * num_ranks + rank * micro
    return indices[start:start + micro]


def _lr_lambda(schedule: str, *, warmup: int, total: int, decay: str):
    if schedule == "constant":
        return lambda step: 1.0

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if decay == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - progress if decay == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return f


def build_optimizer(groups: list[dict], *, ds: dict, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over ``groups``: DeepSpeed's CPU Adam when ZeRO offloads the optimizer, else torch's.

    Both do the same decoupled-weight-decay update (CPU Adam's host step is 5-7x faster). Groups keep
    their own lr, weight_decay and betas; keys they lack (eps, bias_correction) come from the defaults.
    """
    groups = [{k: v for k, v in g.items() if k != "schedule"} for g in groups]
    if dist.offloads(ds, "optimizer"):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay,
                                adamw_mode=True)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)


# --------------------------------------------------------------------------- the loop


@dataclass
class Trainer:
    cfg: RunConfig
    stage_dir: Path
    task: Task
    tokenizer: Any
    train_set: Any
    eval_set: Any
    collator: Any
    ds_config: dict
    log_prefix: str = "train"

    def __post_init__(self):
        self.ckpt_dir = self.stage_dir / "checkpoints"
        self.rank, self.num_ranks = dist.rank(), dist.world_size()
        t = self.cfg.train
        self.global_batch = t.micro_batch_size * t.grad_accum * self.num_ranks
        self._stop_at = int(os.environ.get("NASH_STOP_AT_STEP", "0")) or None
        self.writer = None
        if dist.is_rank_zero():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.stage_dir / "tensorboard"))

    # -- main ---------------------------------------------------------------------------
    def fit(self) -> dict:
        t = self.cfg.train
        groups = [g for g in self.task.param_groups() if g["params"]]
        optimizer = build_optimizer(groups, ds=self.ds_config, lr=t.lr, weight_decay=t.weight_decay)
        log.info("optimizer: %s", type(optimizer).__name__)
        lambdas = [_lr_lambda(g["schedule"], warmup=t.warmup_steps, total=t.max_steps, decay=t.lr_decay)
                   for g in groups]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        stop.pause_point("startup")  # tests: a kill or a stop signal while the ranks start up
        engine = dist.initialize(self.task.module, optimizer=optimizer, lr_scheduler=scheduler, ds=self.ds_config)
        self.engine = engine
        start, best = self._resume(engine)
        if start == 0 and t.eval_at_start:  # the starting model competes for best: training cannot make it worse
            metrics = self.evaluate(engine)
            self._log(0, {f"eval/{k}": v for k, v in metrics.items()})
            log.info("step 0 (the starting model): %s", ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            best = self._update_best(best, 0, metrics)
            self.save(engine, 0, best)
        progress = Progress(total=t.max_steps, initial=start, desc=self.log_prefix) if dist.is_rank_zero() else None
        metrics: dict = {}
        tokens, t0 = 0, time.perf_counter()
        step = start
        while step < t.max_steps:
            engine.train()
            indices = step_indices(len(self.train_set), seed=self.cfg.seed, step=step,
                                   global_batch=self.global_batch)
            logs_acc: dict[str, float] = {}
            for j in range(t.grad_accum):
                mine = micro_slice(indices, micro=t.micro_batch_size, rank=self.rank, num_ranks=self.num_ranks,
                                   micro_step=j)
                batch = self._to_device(self.collator([self.train_set[i] for i in mine]))
                tokens += int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())
                # seeded by the global micro-batch index: dropout and mask samples are the same for
                # 2 ranks x 1 micro-batch and 1 rank x 2 accumulated, and after a resume
                torch.manual_seed(self.cfg.seed * 7919 + step * 104729 + (j * self.num_ranks + self.rank) * 31)
                loss, logs = self.task.training_loss(engine, batch, step)
                engine.backward(loss)
                engine.step()
                for k, v in logs.items():
                    logs_acc[k] = logs_acc.get(k, 0.0) + v / t.grad_accum
            step += 1
            self.task.after_optimizer_step(engine)
            extra = self.task.step_logs(engine, step) if step % t.log_every == 0 or step == t.max_steps else {}
            if progress is not None:
                progress.step(logs_acc.get("loss", float("nan")))
            if step % t.log_every == 0 or step == t.max_steps:
                elapsed = time.perf_counter() - t0
                totals = dist.sum_across_ranks({**logs_acc, "_tokens": tokens})  # logs are means over ranks
                scalars = {k: v / self.num_ranks for k, v in totals.items() if k != "_tokens"}
                scalars["tokens_per_sec"] = totals["_tokens"] / max(elapsed, 1e-9)
                if progress is not None:  # before _log_scalars, which takes the images out of extra
                    progress.logged(step, {**scalars, **extra}, lr=optimizer.param_groups[0]["lr"])
                self._log_scalars(step, scalars, optimizer, groups, extra)
                tokens, t0 = 0, time.perf_counter()
            do_eval = (t.eval_every and step % t.eval_every == 0) or step == t.max_steps
            if do_eval:
                metrics = self.evaluate(engine)
                self._log(step, {f"eval/{k}": v for k, v in metrics.items()})
                if dist.is_rank_zero():
                    progress.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
                best = self._update_best(best, step, metrics)
            if (t.save_every and step % t.save_every == 0) or step == t.max_steps or do_eval:
                self.save(engine, step, best)
            stop.pause_point(f"step:{step}")  # tests: a kill or a stop signal mid-training
            if self._stop_at == step:
                stop.request(f"NASH_STOP_AT_STEP={step}")  # simulated preemption, same path as SIGUSR1
            if dist.any_rank(stop.requested()):
                self.save(engine, step, best)  # no-op when this step was just saved
                if progress is not None:
                    progress.close()
                stop.ignore()  # a late repeat must not kill the exit
                dist.barrier()
                raise Preempted(f"stopped at step {step}: checkpoint {self.ckpt_dir / ckpt.tag_for(step)} saved; "
                                "rerun the same command to resume (Slurm requeues it)")
        if progress is not None:
            progress.close()
        dist.barrier()
        export_tag = best["tag"] if best.get("tag") else ckpt.tag_for(t.max_steps)
        error = None
        if dist.is_rank_zero():
            try:
                state = ckpt.consolidate(self.ckpt_dir, export_tag)
                self.task.export(state, self.stage_dir / "model")
            except Exception as e:  # noqa: BLE001 - raised on every rank below, so none waits forever
                error = e
            if self.writer is not None:
                self.writer.close()
        dist.raise_if_any_rank(error)
        return {"final": metrics, "best": best}

    # -- pieces ---------------------------------------------------------------------------
    def _to_device(self, batch: dict) -> dict:
        dev = dist.device()
        return {k: v.to(dev) for k, v in batch.items()}

    def _log(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is None:
            return
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def _log_scalars(self, step, logs, optimizer, groups, extra) -> None:
        scalars = {f"{self.log_prefix}/{k}": v for k, v in logs.items()}
        for g, pg in zip(groups, optimizer.param_groups):
            scalars[f"lr/{g['name']}"] = pg["lr"]
        images = extra.pop("images", {}) if isinstance(extra, dict) else {}
        scalars.update(extra)
        self._log(step, scalars)
        if self.writer is not None:
            for name, img in images.items():
                self.writer.add_image(name, img, step, dataformats="HWC" if img.ndim == 3 else "HW")

    def _update_best(self, best: dict, step: int, metrics: dict) -> dict:
        t = self.cfg.train
        key = t.metric_for_best
        if key not in metrics:
            raise UserError(f"train.metric_for_best={key!r} is not among the eval metrics {sorted(metrics)}")
        value = metrics[key]
        better = best.get("value") is None or (value > best["value"] if t.greater_is_better else value < best["value"])
        if better and self.task.eligible_for_best(metrics):
            return {"step": step, "tag": ckpt.tag_for(step), "value": value, "metric": key}
        return best

    def save(self, engine, step: int, best: dict) -> None:
        tag = ckpt.tag_for(step)
        if (self.ckpt_dir / tag / ckpt.COMPLETE).exists():
            return
        engine.save_checkpoint(str(self.ckpt_dir), tag=tag, client_state={"step": step, "best": best},
                               save_latest=False)
        ckpt.fsync_tree(self.ckpt_dir / tag)  # on stable storage before any rank can see COMPLETE
        stop.pause_point("checkpoint")  # tests: a kill or a stop signal with the shards written, no COMPLETE yet
        dist.barrier()
        if dist.is_rank_zero():
            ckpt.mark_complete(self.ckpt_dir, tag, {"step": step, "best": best, "world_size": self.num_ranks,
                                                    "zero_stage": dist.zero_stage(self.ds_config),
                                                    "method": self.task.method})
            ckpt.prune_old(self.ckpt_dir, keep=self.cfg.train.keep_checkpoints,
                           protect={best["tag"]} if best.get("tag") else set())
        dist.barrier()

    def _resume(self, engine) -> tuple[int, dict]:
        if not self.cfg.train.resume:
            return 0, {}
        # DeepSpeed's loader unpickles with weights_only=False: every file must load safely first; an unreadable
        # newest checkpoint gives way to the previous one (rank 0 chooses, every rank loads that one)
        tag, info = dist.on_rank_zero(lambda: ckpt.usable_tag(self.ckpt_dir))
        if tag is None:
            return 0, {}
        if info.get("method", "finetune") != self.task.method:
            raise UserError(f"{self.ckpt_dir / tag} was written by method {info.get('method')!r}, not "
                            f"{self.task.method!r}; use another output_dir")
        _, client = engine.load_checkpoint(str(self.ckpt_dir), tag=tag)
        log.info("resumed from %s (step %d)", self.ckpt_dir / tag, client["step"])
        return int(client["step"]), dict(client.get("best") or {})

    # -- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, engine) -> dict[str, float]:
        """Eval loss and generation metrics; every rank takes an equal share (ZeRO-3 safe)."""
        from nash_ds.metrics import compute_metrics, metric_names_for

        gen = self.cfg.generation
        n = len(self.eval_set)
        per_rank = math.ceil(n / self.num_ranks)
        mine = [min(i, n - 1) for i in range(self.rank * per_rank, (self.rank + 1) * per_rank)]
        zero3_multi = dist.zero_stage(self.ds_config) == 3 and self.num_ranks > 1
        engine.eval()
        model = self.task.generation_model(engine)
        preds: list[tuple[int, str, str]] = []
        loss_sum, loss_count = 0.0, 0
        ctx = self.task.eval_context(engine)
        with ctx:
            for start in range(0, per_rank, gen.eval_batch_size):
                chunk = mine[start:start + gen.eval_batch_size]
                examples = [self.eval_set[i] for i in chunk]
                batch = self._to_device(self.collator(examples))
                out = model(**batch)
                ntok = int((batch["labels"] != -100).sum())
                loss_sum += float(out.loss) * ntok
                loss_count += ntok
                generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                           max_new_tokens=gen.max_new_tokens, num_beams=gen.num_beams,
                                           do_sample=False, synced_gpus=zero3_multi)
                texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
                for i, text in zip(chunk, texts):
                    preds.append((i, text.strip(), self.eval_set[i]["references"]))
        extras = self.task.eval_extras(engine)
        engine.train()
        gathered = dist.gather_objects((preds, loss_sum, loss_count))
        result = None
        if dist.is_rank_zero():
            by_index = {}
            for p, _, _ in gathered:
                for i, text, ref in p:
                    by_index[i] = (text, ref)
            order = sorted(by_index)
            result = compute_metrics([by_index[i][0] for i in order], [by_index[i][1] for i in order],
                                     names=metric_names_for(self.cfg.data.task))
            result["loss"] = sum(g[1] for g in gathered) / max(1, sum(g[2] for g in gathered))
            result.update(extras)
        return dist.broadcast_object(result)
