"""Set-up shared by the stages: output directories, tokenizer, data, and the one set-up of the training stages."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nash_ds import dist
from nash_ds.config import RunConfig, dump_yaml
from nash_ds.errors import UserError


def stage_dir(cfg: RunConfig, name: str) -> Path:
    return Path(cfg.output_dir) / name


def check_not_finished(cfg: RunConfig, out: Path, *, marker: str = "model", what: str = "run") -> None:
    """Refuse a finished stage output (``what``: run, evaluation) unless overwrite=true (``open_stage_dir``
    removes it then, once every input was found good: a bad input never costs the previous result)."""
    if (out / marker).exists() and not cfg.overwrite:
        raise UserError(f"{out} already holds a finished {what} ({out / marker} exists); pass overwrite=true "
                        "to replace it, or choose another output_dir")


def check_output_dir(cfg: RunConfig, out: Path) -> None:
    """``output_dir`` and the stage directory are directories this process can write in (or can be created);
    nothing is left behind by the check."""
    for path in (Path(cfg.output_dir), out):
        if path.exists() and not path.is_dir():
            raise UserError(f"output_dir={cfg.output_dir}: {path} is a file, not a directory; choose another "
                            "output_dir")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"output_dir={cfg.output_dir} cannot be created: {existing} is a file, not a directory")
    try:  # os.access says yes to root on read-only and virtual file systems; creating something tells
        os.rmdir(tempfile.mkdtemp(prefix=".nash-write-check-", dir=existing))
    except OSError as e:
        raise UserError(f"output_dir={cfg.output_dir} is not writable: cannot create anything in {existing} "
                        f"({e.strerror or e}); choose another output_dir") from e


def check_stage_start(cfg: RunConfig, out: Path) -> None:
    """Checks every training stage makes before reading anything big: not finished, output directory writable,
    ``train.metric_for_best`` known for the task."""
    from nash_ds.metrics import check_metric_for_best

    check_not_finished(cfg, out)
    check_output_dir(cfg, out)
    check_metric_for_best(cfg.train.metric_for_best, cfg.data.task, greater_is_better=cfg.train.greater_is_better)


def check_before_training(cfg: RunConfig, out: Path, *, num_train: int, method: str) -> None:
    """Last checks before the stage directory is written: one global batch of data, and a checkpoint the run
    would resume from that loads safely and was written by the same method."""
    from nash_ds import checkpoint as ckpt
    from nash_ds.trainer import check_train_size

    t = cfg.train
    check_train_size(num_train, global_batch=t.micro_batch_size * t.grad_accum * dist.world_size())
    ckpt_dir = out / "checkpoints"
    if not t.resume or (cfg.overwrite and (out / "model").exists()):
        return  # nothing to resume from (an overwritten output is removed first)
    tag, info = ckpt.usable_tag(ckpt_dir)  # loads safely; an unreadable newest one gives way to the previous
    if tag is None:
        return
    if info.get("method", "finetune") != method:
        raise UserError(f"{ckpt_dir / tag} was written by method {info.get('method')!r}, not {method!r}; use "
                        "another output_dir, or train.resume=false with overwrite=true to start again")


@dataclass
class TrainingInputs:
    """What ``set_up_training`` checked and built for a training stage."""

    ds: dict
    """The DeepSpeed config, resolved for this run and world size."""
    tokenizer: Any
    data: dict
    """Split name -> tokenized data set ("train" and ``data.eval_split``)."""


def set_up_training(cfg: RunConfig, out: Path, *, method: str, models: dict[str, str], tokenizer_source: str,
                    check_models: Callable[[], None] | None = None) -> TrainingInputs:
    """The checks and builds finetune and prune share, in one order, before any model is loaded or anything
    written: the stage may start (not finished, output writable, metric known); the DeepSpeed config resolved for
    this world (batch numbers agree, a precision this device runs); each of ``models`` ({config key: source})
    readable; ``check_models`` (the stage's own checks of those configs, before the tokenizer, which may come from
    one of them); the tokenizer; the data sets; one global batch and a resumable checkpoint of ``method``."""
    from nash_ds.data import build_datasets

    check_stage_start(cfg, out)
    t = cfg.train
    ds = dist.resolve_ds_config(dist.load_ds_config(t.ds_config), micro_batch_size=t.micro_batch_size,
                                grad_accum=t.grad_accum, grad_clip=t.grad_clip, num_ranks=dist.world_size(),
                                where=f"train.ds_config {t.ds_config}")
    for key, source in models.items():  # before the tokenizer: a missing model is named as the model
        check_model_source(key, source)
    if check_models is not None:
        check_models()
    tokenizer = load_tokenizer(tokenizer_source)
    data = build_datasets(cfg.data, tokenizer, splits=("train", cfg.data.eval_split), seed=cfg.seed)
    check_before_training(cfg, out, num_train=len(data["train"]), method=method)
    return TrainingInputs(ds=ds, tokenizer=tokenizer, data=data)


def check_model_source(key: str, name_or_path: str) -> None:
    """``key``'s model (a preset, hub name or local directory) has a supported config and readable weights;
    ValueError naming ``key`` otherwise (a missing local directory is usually a stage not run yet)."""
    from nash_ds.models import PRESETS, check_weight_files, load_config

    if name_or_path.startswith("preset:"):
        if name_or_path[len("preset:"):] not in PRESETS:
            raise UserError(f"{key}={name_or_path}: unknown preset; presets: "
                            f"{', '.join('preset:' + p for p in sorted(PRESETS))}")
        return
    try:
        load_config(name_or_path)
        check_weight_files(name_or_path)
    except ValueError as e:
        hint = ""
        if name_or_path.rstrip("/").endswith("finetune/model") and not Path(name_or_path).exists():
            hint = " (run 'run.py finetune' with the same output_dir first)"
        raise UserError(f"{key}={name_or_path}{hint}: {e}") from e


def open_stage_dir(cfg: RunConfig, out: Path, *, marker: str = "model") -> None:
    """Create the stage directory (after every input was validated) and record the config; a finished output
    is removed first when overwrite=true."""
    if cfg.overwrite and (out / marker).exists():
        dist.barrier()
        if dist.is_rank_zero():
            shutil.rmtree(out)
        dist.barrier()
    if dist.is_rank_zero():
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_yaml(cfg))
    dist.barrier()


def tokenizer_source(cfg: RunConfig) -> str:
    if cfg.model.tokenizer:
        return cfg.model.tokenizer
    if cfg.model.name_or_path.startswith("preset:"):
        from nash_ds.demo import DEMO_TOKENIZER

        return str(DEMO_TOKENIZER)
    return cfg.model.name_or_path


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    if source.startswith(("/", "./", "../", "~")) and not Path(source).expanduser().exists():
        raise UserError(f"tokenizer directory {source} does not exist; set model.tokenizer to a directory with "
                        "tokenizer files or a hub name")
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load a tokenizer from {source!r} (a hub name or a directory with "
                        f"tokenizer files; set model.tokenizer): {e}") from e


def model_kwargs_from_tokenizer(tok) -> dict:
    """Special-token ids for preset (random-init) models."""
    return dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                bos_token_id=tok.bos_token_id)


def partitioned_build(ds: dict, name_or_path: str):
    """Context that builds/loads a model partitioned under ZeRO-3 (no rank holds it whole).

    Presets (``preset:<name>``, tiny random-init models for tests and the demo) are built whole on
    every rank and partitioned by ``deepspeed.initialize``: their seeded init is then the same for
    any ZeRO stage and world size, which zero.Init's initialisation would not give.
    """
    return dist.zero3_init_context(ds, enabled=not name_or_path.startswith("preset:"))


def newest_model(cfg: RunConfig) -> Path | None:
    """The newest finished model of the run (final, then finalize, then finetune), or None."""
    for stage in ("final", "finalize", "finetune"):
        if (stage_dir(cfg, stage) / "model" / "config.json").is_file():
            return stage_dir(cfg, stage) / "model"
    return None
