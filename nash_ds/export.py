"""Atomic Hugging Face directory writing: model (safetensors), config, tokenizer, remote code.

A directory is published in one rename: everything is written into a temp dir beside the target
and moved into place at the end, so a reader never sees a half-written model (a stage counts as
finished when its ``model/`` exists).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from nash_ds.errors import UserError

ExtraFile = bytes | str | Path


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp dir beside ``out_dir``; on success it becomes ``out_dir`` in one rename.

    Refuses (ValueError) when ``out_dir`` exists and ``overwrite`` is False. On any exception the
    temp dir is removed and ``out_dir`` is left as it was.
    """
    out = Path(out_dir)
    _refuse_existing(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        _refuse_existing(out, overwrite=overwrite)  # someone may have published it meanwhile
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_hf_dir(model: nn.Module, tokenizer, out_dir: str | os.PathLike, *,
                extra_files: dict[str, ExtraFile] | None = None, dtype: torch.dtype | str | None = None,
                overwrite: bool = False) -> Path:
    """Write ``model`` (+ tokenizer, generation config, remote code) as an HF directory, atomically.

    Wrappers (DeepSpeed / DDP ``.module``, ``torch.compile``'s ``_orig_mod``) are removed so state-
    dict keys carry no prefix. ``dtype`` casts a copy of the model (the caller's stays as it is),
    except the modules the class keeps in fp32 (T5's ``wo``).
    Our remote classes copy their ``.py`` files and write ``auto_map`` into config.json, so the
    directory loads with ``AutoModelForSeq2SeqLM.from_pretrained(dir, trust_remote_code=True)``.
    """
    from nash_ds.dist import is_partitioned

    model = unwrap_model(model)
    if is_partitioned(model):
        raise ValueError("save_hf_dir needs whole parameters; this model is ZeRO-3 partitioned "
                         "(gather or consolidate it first)")
    for name in extra_files or {}:
        _check_extra_name(name)
    if dtype is not None and _as_dtype(dtype) != model.dtype:
        model = cast_for_export(copy.deepcopy(model), _as_dtype(dtype))
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, content in (extra_files or {}).items():
            _write_extra(tmp, name, content)
        if getattr(model, "_auto_class", None) is not None:
            _check_remote_code(tmp)
    return Path(out_dir)


def export_model(template: nn.Module, state: dict[str, torch.Tensor], out_dir: str | os.PathLike, *, tokenizer,
                 dtype: torch.dtype | str) -> Path:
    """Rebuild ``template``'s class from its config on the meta device, load the consolidated weights of
    a checkpoint into it (no copy) and save it atomically as an HF directory."""
    from nash_ds.models import load_full_state

    template = unwrap_model(template)
    with torch.device("meta"):
        model = type(template)(template.config)
    load_full_state(model, state, what="consolidated checkpoint")
    model.generation_config = template.generation_config
    return save_hf_dir(model, tokenizer, out_dir, dtype=dtype)


def unwrap_model(model: nn.Module) -> PreTrainedModel:
    """The transformers model inside DeepSpeed / DDP (``.module``) and ``torch.compile`` wrappers."""
    while not isinstance(model, PreTrainedModel):
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            raise ValueError("expected a transformers PreTrainedModel (possibly wrapped), "
                             f"got {type(model).__name__}")
        model = inner
    return model


def _refuse_existing(out: Path, *, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass overwrite=True to replace it")


def _publish(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and removed after."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / out.name)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old / out.name, out)  # put the previous version back
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def cast_for_export(model: PreTrainedModel, dtype: torch.dtype) -> PreTrainedModel:
    """``model`` cast to ``dtype`` in place (returned), leaving ``_keep_in_fp32_modules`` (T5: wo) as they are."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and tensor.dtype != dtype and not keep & set(name.split(".")[:-1]):
            tensor.data = tensor.data.to(dtype)
    return model


def _check_extra_name(name: str) -> None:
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"extra_files key {name!r} must be a relative path inside the directory")


def _write_extra(root: Path, name: str, content: ExtraFile) -> None:
    dest = root / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, Path):
        shutil.copyfile(content, dest)
    elif isinstance(content, bytes):
        dest.write_bytes(content)
    elif isinstance(content, str):
        dest.write_text(content)
    else:
        raise ValueError(f"extra_files[{name!r}] must be bytes, str or Path, got {type(content).__name__}")


def _check_remote_code(root: Path) -> None:
    """Assert that save_pretrained shipped the remote modeling code its auto_map points at."""
    auto_map = json.loads((root / "config.json").read_text()).get("auto_map", {})
    assert {"AutoConfig", "AutoModelForSeq2SeqLM"} <= set(auto_map), auto_map
    for ref in auto_map.values():
        module = ref.split(".")[0]
        assert (root / f"{module}.py").is_file(), f"missing {module}.py for auto_map {ref}"


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise UserError(f"dtype {dtype!r} is not one of {sorted(names)}")
    return names[dtype]
