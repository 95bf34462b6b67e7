"""The family registry: ``get_family`` (dispatch on ``config.model_type`` only), presets, ``load_model``.

A new family is one new module with a ``Family`` subclass, added to ``_FAMILIES``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .bart import BartFamily
from .base import STACKS, Family, select_decoder_layers, validate_kept_layers
from .t5 import T5Family

__all__ = ["Family", "T5Family", "BartFamily", "STACKS", "PRESETS", "get_family", "load_model",
           "select_decoder_layers", "validate_kept_layers", "supported_model_types"]

_FAMILIES: tuple[Family, ...] = (T5Family(), BartFamily())
_BY_TYPE: dict[str, Family] = {t: f for f in _FAMILIES for t in f.model_types}


def register_export_classes() -> None:
    """Let transformers' Auto classes build our pruned exports from the installed nash_ds code.

    The exports also carry the same code for ``trust_remote_code=True`` users; inside nash-ds we
    never execute code from a model directory.
    """
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    from .remote import NashBartConfig, NashBartForConditionalGeneration, NashT5Config, NashT5ForConditionalGeneration

    for config_cls, model_cls in ((NashT5Config, NashT5ForConditionalGeneration),
                                  (NashBartConfig, NashBartForConditionalGeneration)):
        try:
            AutoConfig.register(config_cls.model_type, config_cls)
            AutoModelForSeq2SeqLM.register(config_cls, model_cls)
        except ValueError:  # already registered in this process
            pass


def load_full_state(model: nn.Module, state: dict[str, torch.Tensor], *, what: str = "checkpoint") -> None:
    """Load a consolidated state dict (tied weights under every name) into ``model`` (may be on meta).

    Weights transformers declares tied are tied only where the state holds equal values (or only one
    of them): Flan-T5 / T5 v1.1 keep their own LM head although transformers 5 ties T5 on construction.
    """
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"{what} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    params = dict(model.named_parameters(remove_duplicate=False))
    for target, source in tied.items():
        if target not in state or source not in state or torch.equal(state[target], state[source]):
            module_name, _, attr = target.rpartition(".")
            setattr(model.get_submodule(module_name), attr, params[source])


def supported_model_types() -> list[str]:
    """Every ``config.model_type`` with a family."""
    return sorted(_BY_TYPE)


def get_family(config_or_model: Any) -> Family:
    """The Family of a config or model, by ``config.model_type`` (never by name or path)."""
    config = config_or_model.config if isinstance(config_or_model, nn.Module) else config_or_model
    model_type = getattr(config, "model_type", None)
    if model_type not in _BY_TYPE:
        raise ValueError(f"unsupported model_type {model_type!r}; supported: {supported_model_types()}")
    return _BY_TYPE[model_type]


_TINY_T5 = dict(d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=4, num_decoder_layers=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=32)
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-t5": dict(model_type="t5", feed_forward_proj="relu", **_TINY_T5),
    "tiny-t5-v1_1": dict(model_type="t5", feed_forward_proj="gated-gelu", tie_word_embeddings=False, **_TINY_T5),
    "tiny-bart": dict(model_type="bart", d_model=64, encoder_layers=4, decoder_layers=4,
                      encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                      decoder_ffn_dim=128, max_position_embeddings=512),
}
"""Tiny random-init models for tests and the demo: ``load_model("preset:<name>")``."""

_PRESET_DEFAULTS = {  # vocab and special ids per model type when the caller gives none
    "t5": dict(vocab_size=256, pad_token_id=0, eos_token_id=1, bos_token_id=None, decoder_start_token_id=None),
    "bart": dict(vocab_size=256, pad_token_id=1, eos_token_id=2, bos_token_id=0, decoder_start_token_id=None),
}


def _looks_local(path: str) -> bool:
    return os.path.exists(path) or path.startswith(("/", "./", "../", "~"))


def _build_preset(name: str, *, special: dict[str, int | None], seed: int) -> nn.Module:
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)} (use 'preset:<name>')")
    kwargs = dict(PRESETS[name])
    model_type = kwargs.pop("model_type")
    ids = dict(_PRESET_DEFAULTS[model_type])
    ids.update({k: v for k, v in special.items() if v is not None})
    if ids["decoder_start_token_id"] is None:  # T5 starts from pad, BART from eos
        ids["decoder_start_token_id"] = ids["pad_token_id"] if model_type == "t5" else ids["eos_token_id"]
    if model_type == "bart":
        kwargs["forced_eos_token_id"] = ids["eos_token_id"]
    config = AutoConfig.for_model(model_type, **kwargs, **ids)
    get_family(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSeq2SeqLM.from_config(config)
        tied = model.lm_head.weight is model.get_input_embeddings().weight
        if kwargs.get("tie_word_embeddings") is False and tied:
            # transformers 5 ties T5's head on construction whatever the config says; untie it (Flan-T5
            # style). Distinct values keep it untied through save_pretrained / from_pretrained.
            model.lm_head.weight = nn.Parameter(torch.randn_like(model.lm_head.weight))
    return model


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

    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    if _looks_local(name_or_path) and not os.path.isfile(os.path.join(os.path.expanduser(name_or_path),
                                                                      "config.json")):
        raise ValueError(f"model path {name_or_path!r} looks local but has no config.json "
                         f"(expected a Hugging Face model directory, a hub name, or 'preset:<name>' "
                         f"with one of {sorted(PRESETS)})")
    path = os.path.expanduser(name_or_path)
    register_export_classes()
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except OSError as e:
        raise ValueError(f"could not load the config of {name_or_path!r}: a hub name needs the network or a "
                         f"filled HF cache (HF_HOME), a local path needs config.json: {e}") from e
    get_family(config)  # reject unsupported families before loading any weight
    if vocab_size is not None and vocab_size > config.vocab_size:
        raise ValueError(f"tokenizer vocab_size={vocab_size} exceeds the model's {config.vocab_size} "
                         f"embedding rows ({name_or_path})")
    for key, value in special.items():
        if key != "vocab_size" and value is not None:
            setattr(config, key, value)
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = AutoModelForSeq2SeqLM.from_pretrained(path, config=config, trust_remote_code=False, **kwargs)
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        _untie_head_like_the_checkpoint(model, path)
    return model


def _untie_head_like_the_checkpoint(model: nn.Module, path: str) -> None:
    """ZeRO-3 loading (transformers 5.24) of an untied head (T5 v1.1, Flan-T5): fix what it got wrong.

    T5 is built with its LM head tied to the embedding; the ordinary loader unties the two when the
    checkpoint holds both with different values, but the ZeRO-3 loader loads both keys into the one
    shared parameter (the head's values win) and keeps them tied. Here the embedding gets its own
    values back and the head becomes its own parameter (``deepspeed.initialize`` partitions it).
    """
    import deepspeed

    head, emb = get_family(model).lm_head(model), model.get_input_embeddings()
    if head.weight is not emb.weight:
        return
    names = {m: n for n, m in model.named_modules()}
    head_key, emb_key = f"{names[head]}.weight", f"{names[emb]}.weight"
    tensors = _read_checkpoint_tensors(path, [head_key, emb_key])
    if not tensors or torch.equal(tensors[head_key], tensors[emb_key]):
        return  # tied in the checkpoint too
    with deepspeed.zero.GatheredParameters([emb.weight], modifier_rank=0), torch.no_grad():
        emb.weight.data.copy_(tensors[emb_key])
    head.weight = nn.Parameter(tensors[head_key].to(emb.weight.dtype))
    getattr(model, "all_tied_weights_keys", {}).pop(head_key, None)


def _read_checkpoint_tensors(path: str, keys: list[str]) -> dict[str, torch.Tensor]:
    """``keys`` read from a (possibly sharded) safetensors checkpoint, local or in the HF cache; {} unless
    the checkpoint stores every one of them (a tied checkpoint stores the embedding only)."""
    import json
    from pathlib import Path

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
    out = {}
    for key in keys:
        with safe_open(files[key], "pt") as f:
            out[key] = f.get_tensor(key)
    return out
