"""Set-up shared by the stages: output directories, tokenizer, data."""

from __future__ import annotations

import shutil
from pathlib import Path

from nash_ds import dist
from nash_ds.config import RunConfig, dump_yaml


def stage_dir(cfg: RunConfig, name: str) -> Path:
    return Path(cfg.output_dir) / name


def check_not_finished(cfg: RunConfig, out: Path, *, marker: str = "model") -> None:
    """Refuse to touch a finished stage output unless overwrite=true (then it is removed)."""
    if (out / marker).exists():
        if not cfg.overwrite:
            raise ValueError(f"{out} already holds a finished run ({out / marker} exists); pass overwrite=true "
                             "to replace it, or choose another output_dir")
        dist.barrier()
        if dist.is_rank_zero():
            shutil.rmtree(out)
        dist.barrier()


def open_stage_dir(cfg: RunConfig, out: Path) -> None:
    """Create the stage directory (after every input was validated) and record the config."""
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

    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ValueError(f"could not load a tokenizer from {source!r} (a hub name or a directory with "
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
