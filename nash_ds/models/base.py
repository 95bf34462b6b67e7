"""The Family interface: everything generic code may ask about an encoder-decoder architecture.

Generic code (masks, Lagrangian, distillation, trainer, finalizer) never tests a model's name;
it calls these accessors. A family subclass knows where heads, FFN dims and layers sit, how to
count their parameters and how to shorten the decoder of a stock transformers model.

Parameter counting convention ("prunable" parameters): the q/k/v/out projections of every
attention sublayer and the input/output projections of every FFN, weights and biases. Embeddings,
LM head, norms and T5's relative position bias are not prunable (they are fixed costs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

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
        raise ValueError(f"kept decoder layers must be a non-empty list of indices in [0, {num_layers})")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in kept):
        raise ValueError(f"kept decoder layers must be ints, got {kept!r}")
    if kept != sorted(set(kept)):
        raise ValueError(f"kept decoder layers must be sorted and unique, got {kept}")
    if kept[0] < 0 or kept[-1] >= num_layers:
        raise ValueError(f"kept decoder layers must lie in [0, {num_layers}), got {kept}")
    return kept


def select_decoder_layers(num_layers: int, k: int, rule: str | Sequence[int]) -> list[int]:
    """Indices of the k of ``num_layers`` decoder layers to keep.

    ``rule``: "uniform" (floor((L-1)/(k-1)*i), keeps first and last; k=1 keeps [0]), "low"
    (first k), "high" (last k), or an explicit sorted list of k unique indices.
    """
    if not isinstance(k, int) or not 1 <= k <= num_layers:
        raise ValueError(f"k (decoder layers to keep) must be an int in [1, L={num_layers}], got k={k!r}")
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
        raise ValueError(f"unknown layer selection rule {rule!r}; expected one of {SELECTION_RULES} "
                         f"or an explicit list of ints")
    kept = validate_kept_layers(rule, num_layers=num_layers)
    if len(kept) != k:
        raise ValueError(f"explicit decoder layer list {kept} has {len(kept)} entries but k={k}")
    return kept


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


class Family:
    """Architecture knowledge of one model family. Subclasses override the structural accessors."""

    name: str = "base"
    """Short family name, used in messages."""
    model_types: tuple[str, ...] = ()
    """``config.model_type`` values this family handles."""

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

    # ------------------------------------------------------------------ counting
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

    def count_prunable_params(self, model: nn.Module) -> dict[str, int]:
        """Prunable params counted from the actual weight shapes: {"encoder", "decoder", "model"}.

        Works on physically pruned models (and on meta / ZeRO-3 partitioned ones); a sublayer removed
        by physical pruning may be represented by a ``None`` attention or FFN.
        """
        out = {}
        for stack in STACKS:
            total = 0
            for block in self.layers(model, stack):
                for kind in self.attention_kinds(stack):
                    attn = self.attention(block, kind)
                    if attn is None:
                        continue
                    total += sum(linear_numel(p) for p in self.attn_in_projs(attn))
                    total += linear_numel(self.attn_out_proj(attn))
                if self.ffn(block) is None:
                    continue
                total += sum(linear_numel(p) for p in self.ffn_in_projs(block))
                total += linear_numel(self.ffn_out_proj(block))
            out[stack] = total
        out["model"] = out["encoder"] + out["decoder"]
        return out

    # ------------------------------------------------------------------ student
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
        """The teacher parameter that ``make_student`` copies into the student's parameter ``name``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_types={self.model_types})"
