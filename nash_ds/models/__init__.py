"""The family registry: ``family_for`` (dispatch on ``config.model_type`` only), presets, named shapes,
``load_model``, ``random_model``.

A new family is one new module with a ``Family`` subclass, registered in ``FAMILIES`` below.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from nash_ds.errors import UserError

from .bart import BartFamily
from .base import STACKS, Family, count_params, kept_decoder_layers, select_decoder_layers, validate_kept_layers
from .mbart import MBartFamily
from .mt5 import MT5Family
from .t5 import T5Family

__all__ = ["FAMILIES", "Family", "STACKS", "PRESETS", "check_weight_files", "config_of", "count_params", "family_for",
           "kept_decoder_layers", "load_model", "named_shape_config", "preset_config", "random_model",
           "select_decoder_layers", "validate_kept_layers", "supported_model_types"]

FAMILIES: tuple[Family, ...] = (T5Family(), MT5Family(), BartFamily(), MBartFamily())
"""Every registered family (the first one that names an export model type owns its exports)."""

_BY_TYPE: dict[str, Family] = {}
for _family in FAMILIES:
    for _type in _family.model_types:
        _BY_TYPE.setdefault(_type, _family)
PRESETS: dict[str, dict[str, Any]] = {name: kw for f in FAMILIES for name, kw in f.presets.items()}
"""Tiny random-init models for tests and the demo: ``load_model("preset:<name>")``."""
_PRESET_FAMILY: dict[str, Family] = {name: f for f in FAMILIES for name in f.presets}
SHAPES: dict[str, dict[str, Any]] = {name: kw for f in FAMILIES for name, kw in f.shapes.items()}
"""Public model shapes by name (random weights; ``estimate`` and ``bench/``)."""
_ALIASES: dict[str, str] = {alias: name for f in FAMILIES for alias, name in f.shape_aliases.items()}


def supported_model_types() -> list[str]:
    """Every ``config.model_type`` a family prunes."""
    return sorted(t for f in FAMILIES for t in f.model_types)


def family_for(config_or_model: Any) -> Family:
    """The Family of a config, a model or a model_type string (never by name or path).

    Pruned exports with per-layer widths carry the stock model_type of the family they came from.
    """
    if isinstance(config_or_model, str):
        model_type = config_or_model
    else:
        config = config_or_model.config if isinstance(config_or_model, nn.Module) else config_or_model
        model_type = getattr(config, "model_type", None)
    if model_type not in _BY_TYPE:
        raise UserError(f"unsupported model_type {model_type!r}; supported: {supported_model_types()}")
    return _BY_TYPE[model_type]


def register_export_classes() -> None:
    """Let ``AutoModelForSeq2SeqLM`` build our pruned exports from the installed nash_ds code.

    The exports also carry the same code for ``trust_remote_code=True`` users; inside nash-ds we
    never execute code from a model directory. Their configs have the stock model_type (``load_config``
    turns them into our config classes), so only the model classes are registered, by config class.
    """
    from transformers import AutoModelForSeq2SeqLM

    for family in FAMILIES:
        AutoModelForSeq2SeqLM.register(family.remote_config_class, family.remote_model_class, exist_ok=True)


def load_full_state(model: nn.Module, state: dict[str, torch.Tensor], *, what: str = "checkpoint") -> None:
    """Load a consolidated state dict (tied weights under every name) into ``model`` (may be on meta).

    Weights transformers declares tied are tied only where the state holds equal values (or only one
    of them): ``compat.tie_as_in_state``.
    """
    from nash_ds.compat import tie_as_in_state

    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise UserError(f"{what} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    tie_as_in_state(model, state)


def preset_config(name: str, **special: int | None) -> Any:
    """The config of ``preset:<name>``; ``special``: vocab_size and special token ids (None = the family's)."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; presets: {sorted(PRESETS)} (use 'preset:<name>')")
    return _PRESET_FAMILY[name].preset_config(name, special=special)


def named_shape_config(name: str) -> Any | None:
    """The config of a public shape by name or hub alias (random weights), or None if ``name`` is none."""
    from transformers import AutoConfig

    key = _ALIASES.get(name, name)
    if key not in SHAPES:
        return None
    kwargs = dict(SHAPES[key])
    return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


def config_of(name: str) -> Any:
    """The config of a named shape (t5-base, bart-large, hub aliases), ``preset:<name>``, local directory or
    (cached) hub name; ValueError naming the choices otherwise."""
    config = named_shape_config(name)
    if config is not None:
        return config
    if name.startswith("preset:"):
        return preset_config(name[len("preset:"):])
    try:
        return load_config(name)
    except ValueError as e:
        raise UserError(f"{name!r} is not a named shape ({', '.join(sorted(SHAPES))}), a preset "
                        f"({', '.join(sorted(PRESETS))}) or a readable HF config: {e}") from e


def _looks_local(path: str) -> bool:
    """A path, not a hub name (``name`` or ``org/name``)."""
    return os.path.exists(path) or path.startswith(("/", "./", "../", "~")) or path.count("/") > 1


def random_model(config: Any, *, seed: int = 0, head_std: float | None = None) -> nn.Module:
    """The model of ``config`` with random weights (``Family.from_config``), seeded by ``seed``; the global RNG is left
    as it was. ``head_std``: an untied LM head (T5 v1.1, Flan-T5, mT5) gets its own N(0, head_std^2) values instead of a
    copy of the embedding (distinct values keep it untied through save / load). The one builder of random models:
    presets, latency probes, tests and bench/."""
    from nash_ds.compat import untie_lm_head

    family = family_for(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = family.from_config(config)
        if head_std is not None and family.head_is_untied(config):
            untie_lm_head(model, torch.randn_like(model.get_output_embeddings().weight) * head_std)
    return model


def _build_preset(name: str, *, special: dict[str, int | None], seed: int) -> nn.Module:
    return random_model(preset_config(name, **special), seed=seed, head_std=1.0)  # Flan-T5 style: a head of its own


def load_model(name_or_path: str, *, vocab_size: int | None = None, pad_token_id: int | None = None,
               eos_token_id: int | None = None, bos_token_id: int | None = None,
               decoder_start_token_id: int | None = None, seed: int = 0,
               dtype: torch.dtype | None = None) -> nn.Module:
    """A seq2seq LM: ``"preset:<name>"`` (random init, seeded) or a hub name / local directory.

    For presets the special token ids (from the tokenizer) set the config; for pretrained models
    the given ids override the checkpoint's and ``vocab_size`` must not exceed its embedding rows.
    """
    special = dict(vocab_size=vocab_size, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                   bos_token_id=bos_token_id, decoder_start_token_id=decoder_start_token_id)
    if name_or_path.startswith("preset:"):
        model = _build_preset(name_or_path[len("preset:"):], special=special, seed=seed)
        return model if dtype is None else model.to(dtype)

    from transformers import AutoModelForSeq2SeqLM

    config = load_config(name_or_path)
    if vocab_size is not None and vocab_size > config.vocab_size:
        raise UserError(f"tokenizer vocab_size={vocab_size} exceeds the model's {config.vocab_size} "
                        f"embedding rows ({name_or_path})")
    for key, value in special.items():
        if key != "vocab_size" and value is not None:
            setattr(config, key, value)
    path = os.path.expanduser(name_or_path)
    check_weight_files(path)
    kwargs = {} if dtype is None else {"dtype": dtype}
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(path, config=config, trust_remote_code=False, **kwargs)
    except (OSError, RuntimeError, pickle.UnpicklingError, SafetensorError) as e:  # weights missing, bad or mismatched
        if "mismatch" in str(e):
            raise UserError(f"the weights of {name_or_path!r} do not match its config.json (tensor shapes differ; "
                            "transformers' load report above lists them): export the model again") from e
        raise UserError(f"could not load the weights of {name_or_path!r} ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:300]}); re-export or re-download the model") from e
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        from nash_ds.compat import untie_head_like_the_checkpoint

        untie_head_like_the_checkpoint(model, path)
    return model


def check_weight_files(name_or_path: str) -> None:
    """A local model directory holds readable weights (every safetensors header, every shard an index names);
    hub names are left to the loader. ValueError naming the file: before anything is written or loaded."""
    path = Path(os.path.expanduser(name_or_path))
    if not path.is_dir():
        return
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{index} is not a safetensors index (a JSON object with a weight_map): {e}") from e
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    elif (path / "pytorch_model.bin").is_file():
        return  # transformers reads it with weights_only=True
    else:
        raise UserError(f"model directory {path} holds no weights (model.safetensors, model.safetensors.index.json "
                        "or pytorch_model.bin); export it again (save_pretrained) or point at another model")
    from safetensors import safe_open

    for f in files:
        if not f.is_file():
            raise UserError(f"model directory {path}: weight file {f.name} named by {index.name} is missing")
        try:
            with safe_open(str(f), "pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise UserError(f"model weights {f} are unreadable ({e}): the file is truncated or not safetensors; "
                            "export or download the model again") from e


def load_config(name_or_path: str) -> Any:
    """The transformers config of a hub name or local directory, of a supported family (checked before
    any weight is read)."""
    from transformers import AutoConfig

    if _looks_local(name_or_path) and not os.path.isfile(os.path.join(os.path.expanduser(name_or_path),
                                                                      "config.json")):
        raise UserError(f"model path {name_or_path!r} looks local but has no config.json "
                        f"(expected a Hugging Face model directory, a hub name, or 'preset:<name>' "
                        f"with one of {sorted(PRESETS)})")
    register_export_classes()
    try:
        config = AutoConfig.from_pretrained(os.path.expanduser(name_or_path), trust_remote_code=False)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{os.path.join(name_or_path, 'config.json')} is not valid JSON ({e}); export the model "
                        "again") from e
    except OSError as e:
        if _looks_local(name_or_path):  # config.json is there (checked above) but unreadable
            raise UserError(f"{os.path.join(name_or_path, 'config.json')} is not a readable model config "
                            f"({' '.join(str(e).split())[:200]}); export the model again") from e
        raise UserError(f"could not load the config of {name_or_path!r}: a hub name needs the network or a "
                        f"filled HF cache (HF_HOME), a local path needs config.json: {e}") from e
    return family_for(config).export_config(config)  # rejects unsupported families before any weight is read
