"""Layers shared by the Nash modeling files (self-contained: imports only torch)."""

import torch
from torch import nn
from transformers.cache_utils import EncoderDecoderCache


class EmptyLinear(nn.Module):
    """Stands in for a Linear with ``in_features`` or ``out_features`` 0 (a removed sublayer).

    Outputs exact zeros of shape [..., out_features] and holds no parameter: zero-element
    parameters break DeepSpeed ZeRO-3 partitioning. ``weight`` and ``bias`` are None so that
    parameter counting and dtype checks in model code see nothing.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        if in_features and out_features:
            raise ValueError(f"EmptyLinear needs a zero dimension, got {in_features} -> {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.weight = None
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros((*x.shape[:-1], self.out_features))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def linear(in_features: int, out_features: int, *, bias: bool) -> nn.Module:
    """nn.Linear, or an EmptyLinear when either side is 0."""
    if in_features == 0 or out_features == 0:
        return EmptyLinear(in_features, out_features)
    return nn.Linear(in_features, out_features, bias=bias)


def project_kv(*, k_proj: nn.Module, v_proj: nn.Module, hidden_states, key_value_states, cache, layer_idx,
               head_shape: tuple[int, int], kwargs: dict):
    """Keys and values [batch, heads, kv_len, head_dim] of one attention, through the KV cache.

    The same as transformers' T5 / BART attention, except that an attention with 0 heads caches one
    zero head: an empty cache entry would read as sequence length 0.
    """
    is_cross_attention = key_value_states is not None
    is_updated = False
    curr_cache = cache
    if isinstance(cache, EncoderDecoderCache):
        is_updated = cache.is_updated.get(layer_idx)
        curr_cache = cache.cross_attention_cache if is_cross_attention else cache.self_attention_cache
    if is_cross_attention and cache is not None and is_updated:
        return curr_cache.layers[layer_idx].keys, curr_cache.layers[layer_idx].values
    current_states = key_value_states if is_cross_attention else hidden_states
    kv_shape = (*current_states.shape[:-1], *head_shape)
    key_states = k_proj(current_states).view(kv_shape).transpose(1, 2)
    value_states = v_proj(current_states).view(kv_shape).transpose(1, 2)
    if cache is not None:
        if not head_shape[0]:
            key_states = key_states.new_zeros((key_states.shape[0], 1, *key_states.shape[2:]))
            value_states = torch.zeros_like(key_states)
        key_states, value_states = curr_cache.update(key_states, value_states, layer_idx, kwargs=kwargs)
        if is_cross_attention and isinstance(cache, EncoderDecoderCache):
            cache.is_updated[layer_idx] = True
    return key_states, value_states
