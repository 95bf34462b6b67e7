"""Resumable DeepSpeed checkpoints: atomic "complete" markers, newest-complete lookup, consolidation.

DeepSpeed writes ``<dir>/<tag>/`` shards on every rank. A checkpoint counts only once every rank
has finished writing and rank 0 has dropped ``COMPLETE`` into it; a checkpoint interrupted half
way is never picked up by a resume or by the finalizer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

COMPLETE = "COMPLETE"
TAG_RE = re.compile(r"^step-(\d+)$")


def tag_for(step: int) -> str:
    return f"step-{step:07d}"


def mark_complete(ckpt_dir: Path, tag: str, info: dict) -> None:
    """Rank 0, after a barrier: the checkpoint ``tag`` is whole."""
    path = ckpt_dir / tag / COMPLETE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, path)


def complete_tags(ckpt_dir: Path) -> list[tuple[int, str]]:
    """(step, tag) of every complete checkpoint, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    out = []
    for child in ckpt_dir.iterdir():
        m = TAG_RE.match(child.name)
        if m and (child / COMPLETE).is_file():
            out.append((int(m.group(1)), child.name))
    return sorted(out)


def newest_complete(ckpt_dir: Path) -> str | None:
    tags = complete_tags(ckpt_dir)
    return tags[-1][1] if tags else None


def read_info(ckpt_dir: Path, tag: str) -> dict:
    return json.loads((ckpt_dir / tag / COMPLETE).read_text())


def prune_old(ckpt_dir: Path, *, keep: int, protect: set[str]) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (and any in ``protect``)."""
    tags = [t for _, t in complete_tags(ckpt_dir)]
    for tag in tags[:-keep] if keep > 0 else tags:
        if tag not in protect:
            shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
    for child in ckpt_dir.iterdir() if ckpt_dir.is_dir() else []:
        # shards left by a run that died while writing them
        if TAG_RE.match(child.name) and not (child / COMPLETE).exists() and child.name not in protect:
            newest = tags[-1] if tags else ""
            if child.name < newest:
                shutil.rmtree(child, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> tuple[Path, str]:
    """Accept ``<ckpt_dir>`` (newest complete tag) or ``<ckpt_dir>/<tag>``; clear error otherwise."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"checkpoint {p} does not exist (expected a DeepSpeed checkpoint directory such as "
                         "runs/demo/prune/checkpoints)")
    if (p / COMPLETE).is_file():
        return p.parent, p.name
    tag = newest_complete(p)
    if tag is None:
        raise ValueError(f"checkpoint directory {p} holds no complete checkpoint (no step-*/{COMPLETE}); "
                         "was the run interrupted before its first save?")
    return p, tag


def consolidate(ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """fp32 state dict of the wrapped module from a checkpoint of any ZeRO stage and world size."""
    root = ckpt_dir / tag
    if not (root / COMPLETE).is_file():
        raise ValueError(f"{root} is not a complete nash-ds checkpoint (missing {COMPLETE})")
    zero_files = sorted(root.glob("*optim_states.pt"))
    model_files = sorted(root.glob("*model_states.pt"))
    if not model_files:
        raise ValueError(f"checkpoint {root} has no model state files (*model_states.pt); it is corrupt "
                         "or not a DeepSpeed checkpoint")
    try:
        info = read_info(ckpt_dir, tag)
        if info.get("zero_stage", 0) in (1, 2, 3) and zero_files:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
        else:
            # ZeRO-0: the full fp32 module is in rank 0's model-states file (written by this run)
            blob = torch.load(model_files[0], map_location="cpu", weights_only=False)
            state = blob["module"]
    except ValueError:
        raise
    except Exception as e:  # truncated or foreign files: say which
        raise ValueError(f"could not read checkpoint {root}: {type(e).__name__}: {e}") from e
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
