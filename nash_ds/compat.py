"""Every workaround for the pinned torch / DeepSpeed / transformers, in one place.

Each entry says which version it was seen on, why it is needed, and which test in
``tests/test_compat.py`` fails when it stops being needed or the private API it uses moves. When
``check_versions`` warns at start-up, run that file first: it tells which of these to revisit.

- ``storage_file_offset`` (torch 2.13.0): no public way to read one tensor of a ``torch.save``
  file without reading the whole file;
- ``share_fp32_master`` (DeepSpeed 0.19.8): fp32 ZeRO-3 clones its partitions as the master
  copy (+4 B per parameter and rank);
- ``unlink_shm_allreduce_buffer`` (DeepSpeed 0.19.8): CPU ranks leak a 66 MB /dev/shm file each
  per run;
- ``silence_deepspeed_all_gather_deprecation`` (DeepSpeed 0.19.8 on torch 2.13.0): DeepSpeed's ZeRO calls
  ``torch.distributed.all_gather_into_tensor``, which torch 2.13 deprecates with a FutureWarning a user cannot act on;
- ``return_freed_memory_to_os`` (glibc): freed ZeRO partitions stay in the heap (+1.4 GiB per rank
  for T5-base under ZeRO-3);
- ``untie_lm_head`` / ``tie_as_in_state`` (transformers 5.24.0): T5 and mT5 are built with their
  head tied whatever the config says; T5 v1.1 / Flan-T5 / mT5 checkpoints hold their own;
- ``untie_head_like_the_checkpoint`` (transformers 5.24.0): the ZeRO-3 loader loads an untied
  head into the tied embedding (the head's values win);
- ``clamp_trained_`` (DeepSpeed 0.19.8): ZeRO-1/2/3 and bf16 keep fp32 masters apart from the
  model's tensors, so a clamp of the latter alone is undone at the next step;
- ``ctranslate2_converter`` (ctranslate2 4.8.5, transformers 5.24.0): CTranslate2's loaders read config
  fields transformers 5 changed (T5's forced ``tie_word_embeddings``, BART's missing ``normalize_before``);
- the remote classes (``models/remote``, transformers 5.24.0 / DeepSpeed 0.19.8): they must stay
  self-contained, so their workarounds live there and are listed in ``REMOTE_CLASS_WORKAROUNDS``.

Nothing here imports the rest of the project.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

PINS = {"torch": "2.13.0", "deepspeed": "0.19.8", "transformers": "5.24.0"}
"""The versions these workarounds were written and tested for (requirements.txt pins the same)."""

REMOTE_CLASS_WORKAROUNDS = (
    "NashBartForConditionalGeneration.__init__ sets the head counts to 1 around the stock constructor: "
    "BartAttention.__init__ refuses embed_dim != num_heads * head_dim (transformers 5.24.0); every attention "
    "is replaced right after.",
    "EmptyLinear (a removed sublayer's projection) holds no parameter: DeepSpeed 0.19.8 ZeRO-3 cannot partition "
    "zero-element parameters (tests/test_prune.py fine-tunes such an export under ZeRO-3).",
)
"""Workarounds inside ``nash_ds/models/remote`` (self-contained files copied into every export)."""


# --------------------------------------------------------------------------- versions


def installed_versions() -> dict[str, str]:
    """The installed versions of the pinned packages (local build tags such as +cpu dropped)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in PINS:
        try:
            out[name] = version(name).split("+")[0]
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def check_versions() -> list[str]:
    """Warn (once, at start-up) about every pinned package whose installed version differs."""
    found = installed_versions()
    diffs = [f"{name} {found[name]} (pinned {pin})" for name, pin in PINS.items() if found[name] != pin]
    if diffs:
        log.warning("installed versions differ from the pins: %s; the workarounds in nash_ds/compat.py were "
                    "written for the pins (run tests/test_compat.py to see which still hold)", ", ".join(diffs))
    return diffs


# --------------------------------------------------------------------------- torch


def storage_file_offset(t: torch.Tensor) -> int:
    """Byte offset in its file of the storage of ``t``, a tensor of ``torch.load(..., map_location="meta")``.

    torch 2.13.0 records it as the private ``UntypedStorage._checkpoint_offset`` when loading onto meta;
    there is no public equivalent. ``checkpoint._LazyFile`` reads one tensor at a time with it.
    """
    offset = getattr(t.untyped_storage(), "_checkpoint_offset", None)
    if offset is None:
        raise RuntimeError("torch no longer records _checkpoint_offset on meta-loaded storages "
                           f"(torch {torch.__version__}); see nash_ds/compat.py")
    return int(offset)


# --------------------------------------------------------------------------- DeepSpeed


CHECKPOINT_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
"""The classes (besides tensors and containers) in the files of a DeepSpeed 0.19.8 checkpoint, ZeRO-0/1/2/3 in
fp32, bf16 and fp16, as ``torch.serialization.get_unsafe_globals_in_checkpoint`` lists them for real saves
(tests/test_compat.py saves them again and fails when the set changes). Every checkpoint file nash-ds reads
is unpickled with ``weights_only=True`` and these alone: DeepSpeed's own readers (``engine.load_checkpoint``,
``zero_to_fp32``) use ``weights_only=False``, under which a crafted file runs code while it loads."""


def checkpoint_globals() -> list[type]:
    """The classes of ``CHECKPOINT_GLOBALS``, imported."""
    import importlib

    out = []
    for name in CHECKPOINT_GLOBALS:
        module, _, attr = name.rpartition(".")
        out.append(getattr(importlib.import_module(module), attr))
    return out


def load_checkpoint_file(path: str | os.PathLike, *, map_location: Any = None) -> Any:
    """``torch.load`` of one checkpoint file with ``weights_only=True`` and only ``CHECKPOINT_GLOBALS`` allowed.

    Raises ``pickle.UnpicklingError`` for anything else (``unsupported_global`` says what it asked for),
    before any of it runs.
    """
    with torch.serialization.safe_globals(checkpoint_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def unsupported_global(error: pickle.UnpicklingError) -> str | None:
    """The global a refused ``weights_only`` load asked for (e.g. ``posix.system``), from torch 2.13.0's message."""
    import re

    m = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)", str(error))
    return m.group(1) if m else None




def share_fp32_master(engine) -> int:
    """fp32 ZeRO-3: let the optimizer update the parameter partitions in place; returns bytes freed.

    DeepSpeed 0.19.8 means to skip the master copy when the partitions are already fp32 on the
    optimizer's device, but compares ``tensor.device == self.device`` (a torch.device with a str:
    always False), so it clones them: 4 extra bytes per parameter and rank. Right after initialize the
    clones equal the partitions, so pointing the optimizer at the partitions changes no number
    (tests/test_finetune.py compares ZeRO-3 on 2 ranks with ZeRO-0 on 1).
    """
    opt = getattr(engine, "optimizer", None)
    low_groups = getattr(opt, "fp16_partitioned_groups_flat", None)
    masters = getattr(opt, "fp32_partitioned_groups_flat", None)
    if not low_groups or not masters or getattr(opt, "offload_optimizer", False):
        return 0
    freed = 0
    for i, (low, master) in enumerate(zip(low_groups, masters)):
        if master is low or low is None or low.dtype != master.dtype or low.device != master.device \
                or low.numel() != master.numel():
            continue
        low.ds_id = master.ds_id
        low.requires_grad = True
        masters[i] = low
        freed += master.numel() * master.element_size()
    return freed


def shm_allreduce_buffer_name(rank: int) -> str:
    """The /dev/shm file DeepSpeed 0.19.8's CPU accelerator creates for ``rank`` (MASTER_ADDR/PORT of this job)."""
    return (f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{rank}")


def unlink_shm_allreduce_buffer(rank: int) -> None:
    """Remove this rank's /dev/shm name of DeepSpeed's CPU all-reduce buffer (call after a barrier).

    DeepSpeed 0.19.8's CPU accelerator (ranks on one host) creates a 66 MB shared-memory buffer per
    rank at ``init_distributed`` and never unlinks it: every run left its buffers in /dev/shm (RAM)
    until reboot (15 GB after a day of tests here). Every rank maps all buffers during init, so after
    a barrier the names can go; the mappings stay valid until the processes exit, also when killed.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(shm_allreduce_buffer_name(rank))


ALL_GATHER_DEPRECATION = r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated"
"""The start of torch 2.13.0's FutureWarnings for ``all_gather_into_tensor`` and ``reduce_scatter_tensor``."""


def silence_deepspeed_all_gather_deprecation() -> None:
    """Ignore torch's deprecation of ``torch.distributed.all_gather_into_tensor`` (and of ``reduce_scatter_tensor``,
    ZeRO-3): DeepSpeed 0.19.8 calls them in ``deepspeed/comm/torch.py`` on every run, and only DeepSpeed can move to
    ``all_gather_single`` / ``reduce_scatter_single``. Filtered by its message alone, so every other warning still shows
    (tests/test_compat.py fails once DeepSpeed stops calling it)."""
    import warnings

    warnings.filterwarnings("ignore", message=ALL_GATHER_DEPRECATION, category=FutureWarning)


def return_freed_memory_to_os() -> None:
    """glibc raises its mmap threshold up to 32 MiB after large frees and then keeps freed
    weight-sized buffers in the heap; pin it at 1 MiB so ZeRO's freed partitions leave the process
    (-1.4 GiB per rank for T5-base under ZeRO-3, docs/BENCHMARKS.md "Memory and scale")."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


@torch.no_grad()
def full_fp32_values(params: list[nn.Parameter]) -> list[torch.Tensor]:
    """Whole fp32 values of trained parameters as the optimizer's masters hold them (collective under
    ZeRO-1/2/3: every rank must call it with the same list); the parameter itself without a DeepSpeed
    optimizer wrapper (ZeRO-0 fp32). See ``clamp_trained_`` for why the masters are not the model's tensors."""
    from deepspeed.utils import safe_get_full_fp32_param

    out = []
    for p in params:
        value = None
        if hasattr(p, "ds_id") or hasattr(p, "_hp_mapping"):  # joined by every rank, fragment or not
            value = safe_get_full_fp32_param(p)
        out.append(value.detach().float().reshape(getattr(p, "ds_shape", p.shape)) if value is not None
                   else p.detach().float())
    return out


@torch.no_grad()
def clamp_trained_(params: list[nn.Parameter], lo: float, hi: float) -> None:
    """Clamp trained parameters in place: the optimizer's fp32 masters and the model's tensors alike.

    Collective under ZeRO-1/2/3 (every rank must call it with the same list). DeepSpeed 0.19.8 keeps
    the fp32 masters the optimizer updates apart from the model's tensors (ZeRO-1/2: ``_hp_mapping``
    fragments; ZeRO-3: flat fp32 partitions; bf16 without ZeRO: the bf16 optimizer's masters), and
    copies masters -> model after every step: a clamp of the model's tensors alone is undone at the
    next step and never reaches the checkpoint. The masters are set through DeepSpeed's public
    ``safe_{get,set}_full_fp32_param``; the model's ZeRO-3 partition (``ds_tensor``) is private.
    """
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    for p in params:
        # collective: a rank holding no fragment of p has p._hp_mapping = None and must join all the same
        if hasattr(p, "ds_id") or hasattr(p, "_hp_mapping"):
            master = safe_get_full_fp32_param(p)
            if master is not None:
                safe_set_full_fp32_param(p, master.clamp(lo, hi))
        if hasattr(p, "ds_tensor"):  # ZeRO-3: this rank's partition of the model's tensor
            p.ds_tensor.clamp_(lo, hi)
        if p.numel() > 0:  # ZeRO-0/1/2, or a ZeRO-3 parameter that is whole right now (persistent)
            p.data.clamp_(lo, hi)


# --------------------------------------------------------------------------- transformers: LM heads


def lm_head_is_tied(model: nn.Module) -> bool:
    """Whether the model's output projection is the input embedding tensor (or there is none)."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    return head is None or head.weight is embed.weight


def untie_lm_head(model: nn.Module, weight: torch.Tensor | None = None) -> None:
    """Give ``model`` its own LM head (``weight``, or a copy of the embedding) and forget the tie.

    transformers 5.24.0 builds T5 and mT5 with the head tied to the embedding whatever the config
    says (T5Config forces ``tie_word_embeddings=True``), and unties only when loading a checkpoint
    whose two tensors differ. T5 v1.1, Flan-T5 and mT5 hold their own head: every place that builds
    such a model without loading it (presets, meta models, students, pruned exports) unties here.
    """
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if weight is None:
        weight = embed.weight.detach().clone() if not embed.weight.is_meta else torch.empty_like(embed.weight)
    head.weight = nn.Parameter(weight)
    names = {m: n for n, m in model.named_modules()}
    getattr(model, "all_tied_weights_keys", {}).pop(f"{names[head]}.weight", None)


def tie_as_in_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Re-tie the weights transformers declares tied, but only where ``state`` holds one tensor for both
    (equal values, or only the source): a state with its own LM head keeps it untied (transformers
    5.24.0 declares T5's head tied always; see ``untie_lm_head``). ``state`` was loaded with assign=True."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for target, source in dict(getattr(model, "all_tied_weights_keys", None) or {}).items():
        if target not in state or source not in state or torch.equal(state[target], state[source]):
            module_name, _, attr = target.rpartition(".")
            setattr(model.get_submodule(module_name), attr, params[source])
        else:
            model.all_tied_weights_keys.pop(target, None)


def untie_head_like_the_checkpoint(model: nn.Module, path: str) -> None:
    """After a ZeRO-3 load (transformers 5.24.0) of a checkpoint with its own head: untie it again.

    T5 is built with its LM head tied to the embedding; the ordinary loader unties the two when the
    checkpoint holds both with different values, but the ZeRO-3 loader loads both keys into the one
    shared parameter (the head's values win) and keeps them tied. Here the embedding gets its own
    values back and the head becomes its own parameter (``deepspeed.initialize`` partitions it).
    """
    import deepspeed

    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight is not emb.weight:
        return
    names = {m: n for n, m in model.named_modules()}
    head_key, emb_key = f"{names[head]}.weight", f"{names[emb]}.weight"
    tensors = read_checkpoint_tensors(path, [head_key, emb_key])
    if not tensors or torch.equal(tensors[head_key], tensors[emb_key]):
        return  # tied in the checkpoint too
    with deepspeed.zero.GatheredParameters([emb.weight], modifier_rank=0), torch.no_grad():
        emb.weight.data.copy_(tensors[emb_key])
    untie_lm_head(model, tensors[head_key].to(emb.weight.dtype))


def read_checkpoint_tensors(path: str, keys: list[str]) -> dict[str, torch.Tensor]:
    """``keys`` read from a (possibly sharded) safetensors checkpoint, local or in the HF cache; {} unless
    the checkpoint stores every one of them (a tied checkpoint stores the embedding only)."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    files: dict[str, str] = {}
    index = cached_file(path, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False)
    if index:
        weight_map = json.loads(Path(index).read_text())["weight_map"]
        files = {k: cached_file(path, weight_map[k]) for k in keys if k in weight_map}
    else:
        single = cached_file(path, "model.safetensors", _raise_exceptions_for_missing_entries=False)
        files = {k: single for k in keys} if single else {}

    def stored(key: str) -> bool:
        with safe_open(files[key], "pt") as f:
            return key in f.keys()

    if not all(key in files and stored(key) for key in keys):
        return {}  # read nothing unless every key is there
    out: dict[str, Any] = {}
    for key in keys:
        with safe_open(files[key], "pt") as f:
            out[key] = f.get_tensor(key)
    return out


# --------------------------------------------------------------------------- CTranslate2


def ctranslate2_converter(model_dir: str, *, config_fixes: dict[str, Any]):
    """CTranslate2's own ``TransformersConverter`` for ``model_dir``, with two fixes where its loaders read
    config fields transformers 5 no longer keeps (ctranslate2 4.8.5, transformers 5.24.0):

    - its T5 loader scales the decoder output by d_model**-0.5 when ``config.tie_word_embeddings``, which
      T5Config now forces to True also for T5 v1.1 / Flan-T5 / mT5 (untied heads, no scaling): the flag is set
      to whether the loaded model's head really is the embedding (greedy tokens do not change either way, scores
      and sampling would);
    - its BART / mBART loader reads ``config.normalize_before`` (gone from BartConfig / MBartConfig): the family
      says what it is (``config_fixes``, set only where the attribute is missing).

    ``tests/test_compat.py`` fails when either field is read differently.
    """
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            model = super().load_model(model_class, model_name_or_path, **kwargs)
            model.config.tie_word_embeddings = lm_head_is_tied(model)
            for key, value in config_fixes.items():
                if not hasattr(model.config, key):
                    setattr(model.config, key, value)
            return model

    return Converter(model_dir)
