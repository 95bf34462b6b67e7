"""The family spec: everything generic code may ask about an encoder-decoder architecture.

A family (``models/t5.py``, ``models/bart.py``) is one object that knows, for its model types:
where heads, FFN dims and layers sit; their sizes; the tiny presets and the named public shapes;
how to build a model from a config as the checkpoint would hold it (tied or untied LM head); the
student (decoder cut) and the teacher tensor each student tensor comes from; the config, key
selectors and slicing rules of physical pruning and the export's remote class. Generic code
(masks, Lagrangian, distillation, trainer, finalizer, estimator) never tests a model's name: it
calls these methods (``models.family_for(config)`` finds the family).

Parameter counting has one counter, ``count_params``, which counts the tensors a model really
holds (each tied tensor once, an untied head apart, biases included), on real, meta or ZeRO-3
partitioned models. "Prunable" parameters are the q/k/v/out projections of every attention
sublayer and the input/output projections of every FFN, weights and biases; embeddings, LM head,
norms and T5's relative position bias are fixed costs. ``Family.attn_params`` / ``ffn_params`` give
the same prunable counts as a formula of kept units (differentiable, for the masks' expected
size); tests/test_masks.py checks formula == counter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nash_ds.errors import UserError

STACKS: tuple[str, ...] = ("encoder", "decoder")
ATTN_KINDS: tuple[str, ...] = ("self", "cross")
SELECTION_RULES: tuple[str, ...] = ("uniform", "low", "high")
MASKS_ATTACHED = "_nash_ds_masks_attached"
"""Attribute ``nash_ds.masks.attach`` sets on a model while its hooks are installed."""


def check_stack(stack: str) -> None:
    """Raise ValueError unless ``stack`` is "encoder" or "decoder"."""
    if stack not in STACKS:
        raise ValueError(f"stack must be one of {STACKS}, got {stack!r}")


def check_kind(kind: str) -> None:
    """Raise ValueError unless ``kind`` is "self" or "cross"."""
    if kind not in ATTN_KINDS:
        raise ValueError(f"attention kind must be one of {ATTN_KINDS}, got {kind!r}")


def validate_kept_layers(kept: Sequence[int], *, num_layers: int) -> list[int]:
    """Check an explicit list of kept layer indices: sorted, unique, in [0, num_layers), non-empty."""
    kept = list(kept)
    if not kept:
        raise UserError(f"kept decoder layers must be a non-empty list of indices in [0, {num_layers})")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in kept):
        raise UserError(f"kept decoder layers must be ints, got {kept!r}")
    if kept != sorted(set(kept)):
        raise UserError(f"kept decoder layers must be sorted and unique, got {kept}")
    if kept[0] < 0 or kept[-1] >= num_layers:
        raise UserError(f"kept decoder layers must lie in [0, {num_layers}), got {kept}")
    return kept


def select_decoder_layers(num_layers: int, k: int, rule: str | Sequence[int]) -> list[int]:
    """Indices of the k of ``num_layers`` decoder layers to keep.

    ``rule``: "uniform" (floor((L-1)/(k-1)*i), keeps first and last; k=1 keeps [0]), "low"
    (first k), "high" (last k), or an explicit sorted list of k unique indices.
    """
    if not isinstance(k, int) or not 1 <= k <= num_layers:
        raise UserError(f"k (decoder layers to keep) must be an int in [1, L={num_layers}], got k={k!r}")
    if isinstance(rule, str):
        if rule == "uniform":
            if k == 1:
                return [0]
            # Integer arithmetic: floor((L-1) * i / (k-1)) without float rounding surprises.
            return [((num_layers - 1) * i) // (k - 1) for i in range(k)]
        if rule == "low":
            return list(range(k))
        if rule == "high":
            return list(range(num_layers - k, num_layers))
        raise UserError(f"unknown layer selection rule {rule!r}; expected one of {SELECTION_RULES} "
                        f"or an explicit list of ints")
    kept = validate_kept_layers(rule, num_layers=num_layers)
    if len(kept) != k:
        raise UserError(f"explicit decoder layer list {kept} has {len(kept)} entries but k={k}")
    return kept


DEFAULT_DECODER_LAYERS = 2
"""k when prune.decoder_layers is not given and no speed target chooses it."""


def kept_decoder_layers(prune_cfg: Any, num_decoder_layers: int, *, k: int | None = None) -> list[int]:
    """Teacher decoder layers the student keeps, from a PruneConfig (cofi keeps them all); ``k`` (chosen for a
    speed target) applies when the config gives none."""
    if prune_cfg.method == "cofi":
        return list(range(num_decoder_layers))
    if isinstance(prune_cfg.decoder_layers, list):
        return select_decoder_layers(num_decoder_layers, len(prune_cfg.decoder_layers), prune_cfg.decoder_layers)
    k = prune_cfg.decoder_layers or k or DEFAULT_DECODER_LAYERS
    return select_decoder_layers(num_decoder_layers, k, prune_cfg.decoder_selection)


def distinct_modules(modules: Sequence[nn.Module | None]) -> list[nn.Module]:
    """Drop Nones and repeated modules (by identity), keeping order."""
    seen: set[int] = set()
    out = []
    for m in modules:
        if m is not None and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


def check_unmasked(teacher: nn.Module) -> None:
    """Raise ValueError if mask hooks are attached (a deep copy would carry them along)."""
    if getattr(teacher, MASKS_ATTACHED, False):
        raise ValueError("the teacher has masks attached; build the student from an unmasked model "
                         "(call handle.remove() first)")


def numel(p: torch.Tensor | None) -> int:
    """Number of elements of a parameter, also when ZeRO-3 has partitioned it (``ds_numel``)."""
    if p is None:
        return 0
    return int(getattr(p, "ds_numel", p.numel()))


def linear_numel(linear: nn.Module | None) -> int:
    """Weight + bias element count of a Linear (0 for None)."""
    if linear is None:
        return 0
    return numel(linear.weight) + numel(getattr(linear, "bias", None))


Index = torch.Tensor | None
"""Kept indices along one dim of a tensor; None keeps the whole dim."""
Selector = Callable[[str], "tuple[Index, Index] | None"]
"""A state-dict key -> (kept rows, kept cols), or None to drop the tensor (a removed sublayer)."""


class Family:
    """Architecture knowledge of one model family. Subclasses fill in the attributes and methods."""

    name: str = "base"
    """Short family name, used in messages and reports."""
    model_types: tuple[str, ...] = ()
    """``config.model_type`` values this family prunes (and finetunes, finalizes, evaluates)."""
    presets: Mapping[str, dict[str, Any]] = {}
    """Tiny random-init models (``preset:<name>``): config kwargs, ``model_type`` included."""
    shapes: Mapping[str, dict[str, Any]] = {}
    """Public model shapes by name (``estimate``, ``bench/``): config kwargs, ``model_type`` included."""
    shape_aliases: Mapping[str, str] = {}
    """Hub names -> a name in ``shapes``."""
    ctranslate2_config: Mapping[str, Any] = {}
    """Config fields CTranslate2's converter reads that transformers 5 no longer keeps (``compat.ctranslate2_converter``)."""
    shared_head_positions: bool = False
    """Whether later layers reuse layer 0's per-head position bias by head position (T5): a stock-shaped export
    then needs one self-attention head set per stack."""

    # ------------------------------------------------------------------ building
    def preset_config(self, name: str, *, special: Mapping[str, int | None]) -> Any:
        """The config of preset ``name``; ``special`` (vocab_size and special token ids, None = default)."""
        raise NotImplementedError

    def head_is_untied(self, config: Any) -> bool:
        """Whether a checkpoint of ``config`` holds its own LM head (not the input embedding)."""
        return getattr(config, "tie_word_embeddings", True) is False

    def from_config(self, config: Any) -> nn.Module:
        """A model of ``config`` (stock, or this family's pruned export) as its checkpoint holds it (LM head
        tied or not); on the meta device when the caller builds under ``torch.device("meta")``."""
        from transformers import AutoModelForSeq2SeqLM

        from nash_ds.compat import lm_head_is_tied, untie_lm_head

        if self.is_export(config):
            model = self.remote_model_class(config)
        else:
            model = AutoModelForSeq2SeqLM.from_config(config)
        if self.head_is_untied(config) and lm_head_is_tied(model):
            untie_lm_head(model)
        return model

    # ------------------------------------------------------------------ structure
    def layers(self, model: nn.Module, stack: str) -> list[nn.Module]:
        """The blocks of ``stack`` ("encoder" or "decoder"), in order."""
        raise NotImplementedError

    def attention_kinds(self, stack: str) -> tuple[str, ...]:
        """Attention sublayers of a block of ``stack``: ("self",) or ("self", "cross")."""
        check_stack(stack)
        return ("self",) if stack == "encoder" else ("self", "cross")

    def attention(self, block: nn.Module, kind: str) -> nn.Module:
        """The attention module of ``block``, ``kind`` in {"self", "cross"}."""
        raise NotImplementedError

    def attn_out_proj(self, attn: nn.Module) -> nn.Linear:
        """The Linear whose input is the concatenated head outputs [..., H * head_dim]."""
        raise NotImplementedError

    def attn_in_projs(self, attn: nn.Module) -> list[nn.Linear]:
        """The [q, k, v] projections of ``attn`` (output dim H * head_dim, head-major)."""
        raise NotImplementedError

    def ffn(self, block: nn.Module) -> nn.Module:
        """The FFN module of ``block`` (the one holding its input and output projections)."""
        raise NotImplementedError

    def ffn_out_proj(self, block: nn.Module) -> nn.Linear:
        """The Linear whose input is the FFN activation [..., d_ff]."""
        raise NotImplementedError

    def ffn_in_projs(self, block: nn.Module) -> list[nn.Linear]:
        """The FFN input projections (one, or two for a gated FFN) with output dim d_ff."""
        raise NotImplementedError

    # ------------------------------------------------------------------ hidden dimension
    def token_embeddings(self, model: nn.Module) -> list[nn.Module]:
        """Distinct token-embedding modules (d_model columns), shared or per stack."""
        raise NotImplementedError

    def position_embeddings(self, model: nn.Module) -> list[nn.Module]:
        """Learned absolute position embeddings with d_model columns (none for T5)."""
        return []

    def lm_head(self, model: nn.Module) -> nn.Linear:
        """The output projection d_model -> vocab."""
        return model.lm_head

    def norms(self, model: nn.Module) -> list[nn.Module]:
        """Every norm over d_model (per sublayer, per stack, embedding norms), distinct modules."""
        raise NotImplementedError

    def hidden_mask_outputs(self, model: nn.Module) -> list[nn.Module]:
        """Modules (besides attention/FFN out projections) whose output enters the residual stream
        and must be multiplied by a hidden-dim mask."""
        return []

    def masked_norm(self, norm: nn.Module, x: torch.Tensor, *, hidden: torch.Tensor) -> torch.Tensor:
        """``norm(x)`` computed over the dims where ``hidden != 0`` only, as the model with the other
        dims physically removed would compute it (zeros in the removed dims)."""
        raise NotImplementedError

    def relative_attention_bias(self, model: nn.Module, stack: str) -> nn.Embedding | None:
        """Per-head relative position bias table of ``stack`` (T5: [buckets, H]); None if absent."""
        return None

    # ------------------------------------------------------------------ sizes
    def num_layers(self, config: Any, stack: str) -> int:
        """Number of blocks in ``stack``."""
        raise NotImplementedError

    def num_heads(self, config: Any, stack: str) -> int:
        """Attention heads per layer of ``stack`` (self and cross attention alike)."""
        raise NotImplementedError

    def head_dim(self, config: Any, stack: str = "encoder") -> int:
        """Per-head dimension (T5 d_kv; BART d_model // heads of ``stack``)."""
        raise NotImplementedError

    def d_model(self, config: Any) -> int:
        """Hidden (residual stream) size."""
        return int(config.d_model)

    def d_ff(self, config: Any, stack: str) -> int:
        """FFN intermediate size of ``stack``."""
        raise NotImplementedError

    def has_bias(self, config: Any) -> bool:
        """Whether attention and FFN projections carry biases."""
        raise NotImplementedError

    def num_ffn_in_projs(self, config: Any) -> int:
        """FFN input projections: 1 (plain) or 2 (gated, e.g. T5 v1.1 wi_0 and wi_1)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ prunable counts (formula)
    def attn_params(self, config: Any, stack: str, *, num_heads: Any, nonempty: Any, hidden: Any) -> Any:
        """Prunable params of one attention sublayer with ``num_heads`` heads kept, ``hidden`` hidden
        dims kept, and ``nonempty`` = 1 if any head is kept (the out-projection bias). Works with ints
        or tensors (expected values)."""
        dk = self.head_dim(config, stack)
        total = 4 * dk * num_heads * hidden
        if self.has_bias(config):
            total = total + 3 * dk * num_heads + hidden * nonempty
        return total

    def ffn_params(self, config: Any, stack: str, *, num_dims: Any, nonempty: Any, hidden: Any) -> Any:
        """Prunable params of one FFN with ``num_dims`` intermediate dims and ``hidden`` hidden dims
        kept; ``nonempty`` = 1 if any dim is kept (the output-projection bias)."""
        n_mlp = self.num_ffn_in_projs(config) + 1
        total = n_mlp * num_dims * hidden
        if self.has_bias(config):
            total = total + self.num_ffn_in_projs(config) * num_dims + hidden * nonempty
        return total

    def params_per_head(self, config: Any, stack: str, kind: str) -> int:
        """Params removed with one head at full hidden size (T5: 4*d_model*d_kv; +3*d_kv biases BART)."""
        check_stack(stack)
        check_kind(kind)
        return int(self.attn_params(config, stack, num_heads=1, nonempty=0, hidden=self.d_model(config)))

    def params_per_ffn_dim(self, config: Any, stack: str) -> int:
        """Params removed with one FFN dim (T5 relu 2*d_model, gated 3*d_model; BART 2*d_model + 1)."""
        check_stack(stack)
        return int(self.ffn_params(config, stack, num_dims=1, nonempty=0, hidden=self.d_model(config)))

    def fixed_params_per_attn(self, config: Any, stack: str) -> int:
        """Params of an attention sublayer that go only with the whole sublayer (BART out bias)."""
        return int(self.attn_params(config, stack, num_heads=0, nonempty=1, hidden=self.d_model(config)))

    def fixed_params_per_ffn(self, config: Any, stack: str) -> int:
        """Params of an FFN that go only with the whole FFN (BART fc2 bias)."""
        return int(self.ffn_params(config, stack, num_dims=0, nonempty=1, hidden=self.d_model(config)))

    def dense_prunable_params(self, config: Any) -> dict[str, int]:
        """Prunable params of the dense model described by ``config``: {"encoder", "decoder", "model"}."""
        d = self.d_model(config)
        out = {}
        for stack in STACKS:
            attn = self.attn_params(config, stack, num_heads=self.num_heads(config, stack), nonempty=1,
                                    hidden=d)
            ffn = self.ffn_params(config, stack, num_dims=self.d_ff(config, stack), nonempty=1, hidden=d)
            per_layer = len(self.attention_kinds(stack)) * attn + ffn
            out[stack] = int(self.num_layers(config, stack) * per_layer)
        out["model"] = out["encoder"] + out["decoder"]
        return out

    # ------------------------------------------------------------------ student (decoder cut)
    def make_student(self, teacher: nn.Module, kept_decoder_layers: Sequence[int]) -> nn.Module:
        """A stock model of the teacher's class whose decoder keeps only ``kept_decoder_layers``.

        Encoder, embeddings, LM head and final norms are copied; student decoder block i is a copy of
        teacher block kept[i]. The teacher is not modified.
        """
        raise NotImplementedError

    def student_config(self, config: Any, num_kept: int) -> Any:
        """A copy of the teacher's ``config`` with ``num_kept`` decoder layers (the student's config)."""
        raise NotImplementedError

    def student_source_name(self, name: str, kept_decoder_layers: Sequence[int]) -> str:
        """The teacher tensor that ``make_student`` copies into the student's tensor ``name`` (the
        stock -> student state-dict name mapping; pruned exports keep the student's names)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ physical pruning
    def check_prunable(self, config: Any) -> None:
        """Raise ValueError if ``config`` describes a model this family cannot prune physically
        (called before any training, so a run that could not finalize never starts)."""
        if self.is_export(config):
            raise UserError(f"cannot prune a pruned {self.name} export with per-layer widths "
                            f"({type(config).__name__}) again")
        if config.model_type not in self.model_types:
            raise UserError(f"cannot prune model_type {config.model_type!r}; the {self.name} family prunes "
                            f"{list(self.model_types)}")

    def pruned_config(self, config: Any, plan: Any) -> Any:
        """Config of the pruned model: the stock class's with new sizes when they fit, else the family's
        remote config (per-layer widths). ``plan`` was validated against ``config``."""
        raise NotImplementedError

    def pruned_key_selector(self, config: Any, plan: Any, *, stock: bool) -> Selector:
        """What physical pruning keeps of each state-dict tensor (``stock``: the pruned config is the
        stock class's). Every key of the model must be answered; an unknown key is a ValueError."""
        raise NotImplementedError

    def padded_plan(self, config: Any, plan: Any) -> Any:
        """For ``plan.stock_shape``: a plan holding ``plan``'s units plus units kept at zero whose shape a stock
        config of this family fits (physical pruning zeroes the extra units), or None if there is none."""
        return None

    def fold_pruned_state(self, config: Any, plan: Any, state: dict[str, torch.Tensor]) -> None:
        """Adjust the pruned state in place where removing dims changes a computation (default: none)."""

    @property
    def remote_config_class(self) -> type:
        """Config class of the exports with per-layer widths (``models/remote``)."""
        raise NotImplementedError

    def is_export(self, config: Any) -> bool:
        """Whether ``config`` is this family's pruned export with per-layer widths. Its ``model_type`` is the
        stock one, so the class tells (by name: a copy loaded from an export's own code counts too)."""
        try:
            return type(config).__name__ == self.remote_config_class.__name__
        except NotImplementedError:
            return False

    def export_config(self, config: Any) -> Any:
        """``config`` as the remote config class when it is an export read by stock ``AutoConfig`` (the
        stock model_type gives the stock class; config.json's ``auto_map`` names ours), else ``config``."""
        ref = (getattr(config, "auto_map", None) or {}).get("AutoConfig", "")
        try:
            cls = self.remote_config_class
        except NotImplementedError:
            return config
        if ref.rsplit(".", 1)[-1] != cls.__name__ or self.is_export(config):
            return config
        return cls.from_dict(config.to_dict())

    @property
    def remote_model_class(self) -> type:
        """Model class of the exports with per-layer widths (``models/remote``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_types={self.model_types})"


# ---------------------------------------------------------------------------------- slicing helpers


def index_of(kept: Sequence[int] | None) -> Index:
    """A LongTensor of kept indices (None keeps the whole dim)."""
    return None if kept is None else torch.tensor(list(kept), dtype=torch.long)


def head_rows(heads: Sequence[int], head_dim: int) -> torch.Tensor:
    """Row indices of the kept heads in a [num_heads * head_dim, ...] projection."""
    return torch.tensor([h * head_dim + j for h in heads for j in range(head_dim)], dtype=torch.long)


def heads_of(plan: Any, stack: str, kind: str) -> list[list[int]]:
    """The plan's kept heads per layer of one attention site."""
    if stack == "encoder":
        return plan.encoder_heads
    return plan.decoder_cross_heads if kind == "cross" else plan.decoder_self_heads


def config_kwargs(config: Any) -> dict:
    """Keyword arguments that rebuild ``config`` as another (sub)class (the remote configs)."""
    d = config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "auto_map", "_name_or_path"):
        d.pop(key, None)
    if config._attn_implementation is not None:
        d["attn_implementation"] = config._attn_implementation
    return d


# ---------------------------------------------------------------------------------- the one counter


def count_params(model: nn.Module, family: Family) -> dict[str, int]:
    """Parameters ``model`` really holds, each tensor once (tied ones once, an untied head apart).

    ``total``; ``embeddings`` (token and position embeddings and the LM head); ``encoder`` /
    ``decoder`` (their blocks and norms, embeddings excluded); ``prunable_encoder`` /
    ``prunable_decoder`` / ``prunable_model`` (attention and FFN projections, biases included);
    ``encoder_layers`` / ``decoder_layers``. Works on meta and ZeRO-3 partitioned models (``ds_numel``)
    and on physically pruned ones (a removed sublayer holds no tensor).
    """
    every = {id(p): p for p in model.parameters()}

    def count(ids) -> int:
        return int(sum(numel(every[i]) for i in ids if i in every))

    embed = [model.get_input_embeddings(), model.get_output_embeddings(), *family.token_embeddings(model),
             *family.position_embeddings(model)]
    embed_ids = {id(p) for m in embed if m is not None for p in m.parameters()}
    enc = {id(p) for p in model.get_encoder().parameters()}
    dec = {id(p) for p in model.get_decoder().parameters()}
    prunable = {}
    for stack in STACKS:
        total = 0
        for block in family.layers(model, stack):
            for kind in family.attention_kinds(stack):
                attn = family.attention(block, kind)
                total += sum(linear_numel(p) for p in [*family.attn_in_projs(attn), family.attn_out_proj(attn)])
            total += sum(linear_numel(p) for p in [*family.ffn_in_projs(block), family.ffn_out_proj(block)])
        prunable[stack] = total
    return {"total": count(every), "embeddings": count(embed_ids), "encoder": count(enc - embed_ids),
            "decoder": count(dec - embed_ids), "prunable_encoder": prunable["encoder"],
            "prunable_decoder": prunable["decoder"], "prunable_model": prunable["encoder"] + prunable["decoder"],
            "encoder_layers": len(family.layers(model, "encoder")),
            "decoder_layers": len(family.layers(model, "decoder"))}


def sparsity(params: dict[str, int], reference: dict[str, int]) -> dict[str, float]:
    """1 - ours / reference for counts of ``count_params``: whole model, prunable model (the decoder cut
    included), encoder, decoder."""
    def frac(key: str) -> float | None:
        return 1.0 - params[key] / reference[key] if reference[key] else None

    return {"total_params": frac("total"), "prunable_model": frac("prunable_model"),
            "encoder": frac("prunable_encoder"), "decoder": frac("prunable_decoder")}
