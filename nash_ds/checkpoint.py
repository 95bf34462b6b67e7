"""Resumable DeepSpeed checkpoints: atomic "complete" markers, newest-complete lookup, consolidation.

DeepSpeed writes ``<dir>/<tag>/`` shards on every rank. A checkpoint counts only once every rank
has finished writing and rank 0 has dropped ``COMPLETE`` into it; a checkpoint interrupted half
way is never picked up by a resume or by the finalizer. Every file of a checkpoint is fsynced, by the
ranks that wrote it, before the marker is written (and the marker before it is renamed into place), so a
marker never outlives its shards in a crash. When the newest complete checkpoint cannot be read (truncated,
a marker that is not JSON), a resume and the finalizer fall back to the previous one and say so
(``usable_tag``); a checkpoint whose pickle asks for code is refused, never skipped.

Every checkpoint file is unpickled with ``weights_only=True`` and only the DeepSpeed classes of
``compat.CHECKPOINT_GLOBALS`` (``load_file``); before DeepSpeed's own readers (which unpickle with
``weights_only=False``) see a checkpoint, ``verify_loadable`` has loaded each of its files that way.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from nash_ds.compat import load_checkpoint_file, storage_file_offset, unsupported_global
from nash_ds.errors import UserError

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
META_FILE = "prune_meta.json"
"""Beside a prune stage's checkpoints: method, family, teacher, kept decoder layers, student and teacher
configs and the teacher's parameter counts (what the finalizer needs besides the tensors)."""
META_KEYS = ("method", "family", "teacher", "kept_decoder_layers", "student_config", "teacher_config",
             "teacher_params")
"""What the finalizer reads from ``META_FILE``."""
TAG_RE = re.compile(r"^step-(\d+)$")


class UnreadableCheckpoint(UserError):
    """A checkpoint file or marker that cannot be read (truncated, missing, not JSON): an older checkpoint
    may stand in for it. A refused pickle is a plain ``UserError``: it is never skipped silently."""


def tag_for(step: int) -> str:
    return f"step-{step:07d}"


def mark_complete(ckpt_dir: Path, tag: str, info: dict) -> None:
    """Rank 0, after a barrier: the checkpoint ``tag`` is whole."""
    path = ckpt_dir / tag / COMPLETE
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(info, indent=1))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` (and the directories) to stable storage: each rank calls it on the
    checkpoint it has just written, before the barrier after which rank 0 marks it complete."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename or a new file in it); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def write_meta(ckpt_dir: Path, meta: dict) -> None:
    """Rank 0: the run's metadata beside its checkpoints (``META_FILE``), written atomically."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, ckpt_dir / META_FILE)


def read_meta(ckpt_dir: Path) -> dict:
    """The metadata ``write_meta`` wrote; ValueError naming the file when it is missing or unreadable."""
    path = ckpt_dir / META_FILE
    if not path.is_file():
        raise UserError(f"{ckpt_dir} is not a prune-stage checkpoint directory (no {META_FILE}); finalize "
                        "reads the checkpoints of 'run.py prune'")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); it is written by 'run.py prune'") from e
    missing = [k for k in META_KEYS if k not in meta] if isinstance(meta, dict) else list(META_KEYS)
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; it is written by 'run.py prune' (rerun the prune stage, "
                        "or point finalize.checkpoint at the checkpoints of one)")
    for key in ("student_config", "teacher_config"):
        if not isinstance(meta[key], dict) or "model_type" not in meta[key]:
            raise UserError(f"{path}: {key} must be a model config with a model_type; it is written by 'run.py prune'")
    return meta


def read_info(ckpt_dir: Path, tag: str) -> dict:
    """The ``COMPLETE`` marker's record (step, best, world size, ZeRO stage, method); ValueError naming it if bad."""
    path = ckpt_dir / tag / COMPLETE
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnreadableCheckpoint(f"{path} is not a readable checkpoint marker ({e}); it is written by nash-ds "
                                   f"when every rank saved {tag}: delete {ckpt_dir / tag} to ignore that "
                                   "checkpoint") from e
    if not isinstance(info, dict):  # a user's file, not a caller's type error
        raise UnreadableCheckpoint(f"{path} must hold a JSON object, got {type(info).__name__}; "  # noqa: TRY004
                                   f"delete {ckpt_dir / tag} to ignore that checkpoint")
    return info


def load_file(path: str | os.PathLike, *, map_location=None):
    """One checkpoint file, unpickled safely (``compat.load_checkpoint_file``); ValueError naming the file when
    it is not a ``torch.save`` file or asks for anything but tensors, containers and DeepSpeed's few classes."""
    try:
        return load_checkpoint_file(path, map_location=map_location)
    except pickle.UnpicklingError as e:
        what = unsupported_global(e)
        if what is None:
            reason = str(e).split("WeightsUnpickler error:", 1)[-1].split("\n\n")[0].strip()
            raise UnreadableCheckpoint(f"could not read checkpoint file {path} ({reason[:200]}); it is truncated, "
                                       "not a torch.save file, or holds objects nash-ds does not unpickle") from e
        raise UserError(f"refused to load {path}: it is not a checkpoint DeepSpeed wrote for nash-ds (its pickle "
                        f"asks for {what}, which could run code); nash-ds unpickles checkpoints with "
                        "weights_only=True and only the classes in nash_ds/compat.py CHECKPOINT_GLOBALS. Point at a "
                        "checkpoint written by nash-ds") from e
    except FileNotFoundError as e:
        raise UnreadableCheckpoint(f"checkpoint file {path} does not exist") from e
    except Exception as e:  # truncated, empty or not a torch.save file: name it
        reason = " ".join(str(e).split())[:160]
        raise UnreadableCheckpoint(f"could not read checkpoint file {path} ({type(e).__name__}: {reason}); it is "
                                   "truncated or not a torch.save file") from e


def verify_loadable(tag_dir: Path) -> None:
    """Load every ``*.pt`` file of one checkpoint the safe way, on the meta device (no tensor data is read).

    Called before DeepSpeed's readers (``engine.load_checkpoint``, ``zero_to_fp32``), which unpickle with
    ``weights_only=False``: a file they would run code from is refused here first, naming it.
    """
    for path in sorted(Path(tag_dir).glob("*.pt")):
        load_file(path, map_location="meta")


def usable_tag(ckpt_dir: Path, tags: list[str] | None = None) -> tuple[str | None, dict]:
    """(tag, marker record) of the newest complete checkpoint whose marker and files load safely, trying
    ``tags`` (default: every complete one, newest first) in turn; ``(None, {})`` when there is none.

    A checkpoint that cannot be read is skipped with a warning naming it and the one used instead; when
    none can be read, the newest one's error is raised. A refused pickle is raised at once.
    """
    tags = [t for _, t in reversed(complete_tags(ckpt_dir))] if tags is None else tags
    skipped: list[tuple[str, UnreadableCheckpoint]] = []
    for tag in tags:
        try:
            info = read_info(ckpt_dir, tag)
            verify_loadable(ckpt_dir / tag)
        except UnreadableCheckpoint as e:
            skipped.append((tag, e))
            continue
        for bad, e in skipped:
            log.warning("checkpoint %s cannot be read (%s); falling back to the previous one", ckpt_dir / bad, e)
        if skipped:
            log.warning("using checkpoint %s", ckpt_dir / tag)
        return tag, info
    if skipped:
        first = skipped[0][1]
        if len(skipped) == 1:
            raise first
        raise UnreadableCheckpoint(f"{first}; no earlier complete checkpoint in {ckpt_dir} can be read either")
    return None, {}


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
        raise UserError(f"checkpoint {p} does not exist (expected a DeepSpeed checkpoint directory such as "
                        "runs/demo/prune/checkpoints)")
    if (p / COMPLETE).is_file():
        return p.parent, p.name
    tag = newest_complete(p)
    if tag is None:
        raise UserError(f"checkpoint directory {p} holds no complete checkpoint (no step-*/{COMPLETE}); "
                        "was the run interrupted before its first save?")
    return p, tag


def consolidate(ckpt_dir: Path, tag: str, *, keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """fp32 state dict of the wrapped module from a checkpoint of any ZeRO stage and world size.

    Streams tensor by tensor: the files are opened on the meta device and only the tensors named
    by ``keep`` (default: all) are read, each straight into its own fp32 tensor, so the peak is
    what is returned plus one tensor. Optimizer moments are never read. Tied and shared weights
    come back as one tensor under every name, as DeepSpeed's ``zero_to_fp32`` returns them.
    """
    root = ckpt_dir / tag
    if not (root / COMPLETE).is_file():
        raise UserError(f"{root} is not a complete nash-ds checkpoint (missing {COMPLETE})")
    zero_files = sorted(root.glob("*optim_states.pt"))
    model_files = sorted(root.glob("*model_states.pt"))
    if not model_files:
        raise UserError(f"checkpoint {root} has no model state files (*model_states.pt); it is corrupt "
                        "or not a DeepSpeed checkpoint")
    keep = keep or (lambda name: True)
    try:
        info = read_info(ckpt_dir, tag)
        if info.get("zero_stage", 0) in (1, 2, 3) and zero_files:
            try:
                state = _read_zero(root, keep=keep)
            except KeyError as e:  # a layout this reader does not know: DeepSpeed's own (lazy) reader
                log.warning("consolidate: falling back to DeepSpeed's zero_to_fp32 (%r not found)", e)
                state = _read_with_deepspeed(ckpt_dir, tag, keep=keep)
        else:
            # ZeRO-0: the full module is in rank 0's model-states file (written by this run), next
            # to the optimizer state, which stays unread
            with _LazyFile(model_files[0]) as f:
                state = _read_named(f, f.obj["module"], keep=keep)
    except ValueError:
        raise
    except Exception as e:  # truncated or foreign files: say which
        raise UserError(f"could not read checkpoint {root}: {type(e).__name__}: {e}") from e
    return state


# --------------------------------------------------------------------------------------------
# streaming reader: one tensor at a time, plain reads
# --------------------------------------------------------------------------------------------

class _LazyFile:
    """A ``torch.save`` file unpickled on the meta device; tensors are copied out on demand.

    Plain reads, no mmap: the pages of a mapped file count in the process's RSS once touched and
    stay there while any tensor of the mapping lives, so reading a mapped checkpoint costs its
    size in RSS on top of the copies.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.obj = load_file(self.path, map_location="meta")
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed by __exit__

    def __enter__(self) -> _LazyFile:
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def read(self, t: torch.Tensor) -> torch.Tensor:
        """A CPU copy of the meta tensor ``t``."""
        if t.numel() == 0:
            return torch.empty(t.shape, dtype=t.dtype)
        if t.is_contiguous():
            out = torch.empty(t.numel(), dtype=t.dtype)
            self.read_into(t.reshape(-1), 0, out)
            return out.view(t.shape)
        extent = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
        flat = torch.empty(extent, dtype=t.dtype)
        self.read_into(t.as_strided((extent,), (1,)), 0, flat)
        return flat.as_strided(t.shape, t.stride()).clone()

    def read_into(self, t: torch.Tensor, start: int, out: torch.Tensor) -> None:
        """``out`` (1-D, contiguous) <- elements ``[start, start + len(out))`` of the 1-D meta tensor ``t``."""
        assert t.dim() == 1 and out.dim() == 1 and out.is_contiguous() and out.dtype == t.dtype
        assert 0 <= start and start + out.numel() <= t.numel(), (start, out.numel(), t.numel())
        offset = storage_file_offset(t) + (t.storage_offset() + start * t.stride(0)) * t.element_size()
        view = memoryview(out.view(torch.uint8).numpy())
        self._file.seek(offset)
        done = 0
        while done < len(view):
            n = self._file.readinto(view[done:])
            if not n:
                raise EOFError(f"{self.path} is truncated")
            done += n


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t


def _read_named(f: _LazyFile, tensors: dict, *, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """fp32 copies of the kept entries of a {name: meta tensor} dict; views of one storage region
    (tied weights) come back as one tensor."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[tuple, torch.Tensor] = {}
    for name, t in tensors.items():
        if not keep(name):
            continue
        where = (storage_file_offset(t), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if where not in seen:
            seen[where] = _fp32(f.read(t))
        out[name] = seen[where]
    return out


def _read_span(segments: list[tuple[_LazyFile, torch.Tensor]], start: int, out: torch.Tensor) -> None:
    """``out`` <- elements ``[start, start + len(out))`` of the concatenation of 1-D meta ``segments``."""
    end = start + out.numel()
    pos = 0  # where the current segment starts in the concatenation
    for f, seg in segments:
        lo, hi = max(start, pos), min(end, pos + seg.numel())
        if lo < hi:
            f.read_into(seg, lo - pos, out[lo - start:hi - start])
        pos += seg.numel()
        if pos >= end:
            return
    raise RuntimeError(f"flat fp32 groups hold {pos} elements, a parameter needs [{start}, {end})")


def _read_zero(root: Path, *, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """fp32 weights from the fp32 master partitions of a ZeRO-1/2/3 checkpoint, one parameter at a
    time (the layout of DeepSpeed's ``zero_to_fp32``, which instead concatenates whole groups
    (ZeRO-1/2) or maps the files (lazy_mode, ZeRO-3))."""
    from deepspeed.utils.zero_to_fp32 import get_model_state_files, get_optim_files

    model_files = [_LazyFile(Path(p)) for p in get_model_state_files(str(root))]
    optim_files = [_LazyFile(Path(p)) for p in get_optim_files(str(root))]
    try:
        ms = model_files[0].obj
        osd = [f.obj["optimizer_state_dict"] for f in optim_files]
        stage = osd[0]["zero_stage"]
        world = osd[0]["partition_count"]
        world = max(world) if isinstance(world, list) else world
        if world != len(optim_files):
            raise RuntimeError(f"{root} holds {len(optim_files)} optimizer shards but was written by {world} ranks")
        shared = dict(ms["shared_params"])  # alias -> source
        sources = {src for alias, src in shared.items() if keep(alias)}

        def wanted(name: str) -> bool:
            return keep(name) or name in sources

        state = {name: _fp32(model_files[0].read(ms["module"][name]))
                 for name in ms["buffer_names"] if wanted(name)}
        for name, shape in (ms.get("frozen_param_shapes") or {}).items():
            if not wanted(name):
                continue
            if stage <= 2:
                state[name] = _fp32(model_files[0].read(ms["frozen_param_fragments"][name]))
            else:
                parts = [f.read(f.obj["frozen_param_fragments"][name]) for f in model_files]
                state[name] = _fp32(torch.cat(parts).narrow(0, 0, shape.numel()).view(shape))
        if stage <= 2:
            paddings = osd[0].get("param_alignment_paddings")
            for g, shapes in enumerate(ms["param_shapes"]):
                segments = [(f, o["single_partition_of_fp32_groups"][g]) for f, o in zip(optim_files, osd)]
                offset = 0
                for i, (name, shape) in enumerate(shapes.items()):
                    n = math.prod(shape)
                    if wanted(name):
                        out = torch.empty(n, dtype=segments[0][1].dtype)
                        _read_span(segments, offset, out)
                        state[name] = _fp32(out).view(shape)
                    offset += n + (paddings[g][i] if paddings is not None else 0)
                total = sum(seg.numel() for _, seg in segments)
                align = 2 * world  # ZeRO-2 pads each group to a multiple of 2 * world elements
                if math.ceil(offset / align) != math.ceil(total / align):
                    raise RuntimeError(f"group {g}: parameters take {offset} elements, the partitions {total}")
        elif stage == 3:
            shapes = {k: v for d in ms["param_shapes"] for k, v in d.items()}
            per_rank = [[(f, t) for t in o["fp32_flat_groups"]] for f, o in zip(optim_files, osd)]
            offset = 0  # in every rank's concatenated flat groups
            for name, shape in shapes.items():
                n = shape.numel()
                part = math.ceil(n / world)  # elements of this parameter on each rank (the last one padded)
                if wanted(name):
                    out = torch.empty(n, dtype=per_rank[0][0][1].dtype)
                    for r in range(world):
                        lo, hi = r * part, min(n, (r + 1) * part)
                        if lo < hi:
                            _read_span(per_rank[r], offset, out[lo:hi])
                    state[name] = _fp32(out).view(shape)
                offset += part
            total = sum(t.numel() for _, t in per_rank[0])
            if offset != total:
                raise RuntimeError(f"parameters take {offset} elements per rank, the flat groups {total}")
        else:
            raise RuntimeError(f"unknown ZeRO stage {stage} in {root}")
        for alias, source in shared.items():
            if source in state and keep(alias):
                state[alias] = state[source]
        return {k: v for k, v in state.items() if keep(k)}
    finally:
        for f in model_files + optim_files:
            f.__exit__()


def _read_with_deepspeed(ckpt_dir: Path, tag: str, *, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint(lazy_mode=True)``, converted tensor by tensor."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    verify_loadable(ckpt_dir / tag)  # DeepSpeed's reader unpickles with weights_only=False
    lazy = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag, lazy_mode=True)
    out: dict[str, torch.Tensor] = {}
    done: dict[int, torch.Tensor] = {}
    for name, t in lazy.items():
        if keep(name):
            if id(t) not in done:
                done[id(t)] = _fp32(t.contiguous())
            out[name] = done[id(t)]
    return out
