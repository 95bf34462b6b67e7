"""T5 with per-layer head sets and FFN widths (a physically pruned NASH / CoFi model).

Self-contained (imports only torch, transformers and its sibling files): copied into the
exported model directory and loaded with ``AutoModelForSeq2SeqLM.from_pretrained(dir,
trust_remote_code=True)``. The model is the stock ``T5ForConditionalGeneration``; ``__init__``
resizes the FFNs per layer and swaps every attention for ``NashT5Attention``, which keeps a
subset of the original heads and slices the shared relative position bias accordingly.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers import T5ForConditionalGeneration
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.t5.modeling_t5 import T5Attention, eager_attention_forward

from .configuration_nash_t5 import NashT5Config
from .modeling_nash_utils import linear, project_kv


class NashT5Attention(T5Attention):
    """T5Attention over the heads ``kept_heads`` (original numbering), possibly none.

    The position bias travelling between layers always covers all ``config.num_heads`` original
    heads: this module slices its kept heads out of it and returns the full tensor unchanged.
    With no kept head the module outputs exact zeros; the cache then holds one zero head so that
    its sequence length (read by the mask and the position bias) stays right during generation.
    """

    def __init__(self, config, *, kept_heads: list[int], has_relative_attention_bias: bool,
                 layer_idx: int | None, is_causal: bool):
        super().__init__(config, has_relative_attention_bias=has_relative_attention_bias,
                         layer_idx=layer_idx, is_causal=is_causal)
        self.kept_heads = [int(h) for h in kept_heads]
        self.num_bias_heads = config.num_heads  # heads of the shared position bias
        self._kept_index: dict = {}
        self.n_heads = len(self.kept_heads)
        self.inner_dim = self.n_heads * self.key_value_proj_dim
        self.q = linear(self.d_model, self.inner_dim, bias=False)
        self.k = linear(self.d_model, self.inner_dim, bias=False)
        self.v = linear(self.d_model, self.inner_dim, bias=False)
        self.o = linear(self.inner_dim, self.d_model, bias=False)

    def forward(self, hidden_states, mask=None, key_value_states=None, position_bias=None, cache=None,
                **kwargs):
        input_shape = hidden_states.shape[:-1]  # (batch, q_len)
        head_shape = (self.n_heads, self.key_value_proj_dim)  # explicit: -1 fails with 0 heads
        past_seen_tokens = cache.get_seq_length(self.layer_idx) if cache is not None else 0
        if isinstance(past_seen_tokens, torch.Tensor):
            past_seen_tokens = past_seen_tokens.clone()

        # (batch, heads, q_len, d_kv)
        query_states = self.q(hidden_states).view(*input_shape, *head_shape).transpose(1, 2)

        key_states, value_states = project_kv(k_proj=self.k, v_proj=self.v, hidden_states=hidden_states,
                                              key_value_states=key_value_states, cache=cache,
                                              layer_idx=self.layer_idx, head_shape=head_shape, kwargs=kwargs)

        if position_bias is None:  # first layer of the stack: bias for ALL original heads
            key_length = key_states.shape[-2]
            if self.has_relative_attention_bias:
                # contiguous once here: every layer gathers its kept heads from it (3x faster than from
                # compute_bias's permuted view; ~3% of a T5-base encoder pass, bench/speed.py --uniform)
                position_bias = self.compute_bias(input_shape[1], key_length, device=query_states.device,
                                                  past_seen_tokens=past_seen_tokens).contiguous()
            else:
                position_bias = torch.zeros((1, self.num_bias_heads, input_shape[1], key_length),
                                            device=query_states.device, dtype=query_states.dtype)
        # (1 or batch, kept heads, q_len, k_len)
        if self.kept_heads == list(range(self.num_bias_heads)):
            kept_bias = position_bias
        else:  # index tensor cached per device: no host-to-device copy per call and decoding step
            index = self._kept_index.get(position_bias.device)
            if index is None:
                index = torch.tensor(self.kept_heads, dtype=torch.long, device=position_bias.device)
                self._kept_index[position_bias.device] = index
            kept_bias = position_bias.index_select(1, index)

        attn_weights = None
        if self.n_heads == 0:
            attn_output = query_states.new_zeros((*input_shape, 0))
        else:
            attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward)
            attn_output, attn_weights = attention_interface(
                self, query_states, key_states, value_states, mask,
                dropout=0.0 if not self.training else self.dropout, scaling=self.scaling,
                position_bias=kept_bias, **kwargs)
            attn_output = attn_output.reshape(*input_shape, self.inner_dim).contiguous()
        attn_output = self.o(attn_output)  # (batch, q_len, d_model); zeros when no head is kept
        return attn_output, position_bias, attn_weights


def _resize_ffn(dense: nn.Module, width: int) -> None:
    """Resize a T5 DenseReluDense / DenseGatedActDense to ``width`` intermediate dims (0: none)."""
    d_model = dense.wo.out_features
    for name in ("wi", "wi_0", "wi_1"):
        if hasattr(dense, name):
            setattr(dense, name, linear(d_model, width, bias=False))
    dense.wo = linear(width, d_model, bias=False)


def _swap_attention(holder: nn.Module, attr: str, kept_heads: list[int]) -> None:
    old = getattr(holder, attr)
    setattr(holder, attr, NashT5Attention(
        old.config, kept_heads=kept_heads, has_relative_attention_bias=old.has_relative_attention_bias,
        layer_idx=old.layer_idx, is_causal=old.is_causal))


class NashT5ForConditionalGeneration(T5ForConditionalGeneration):
    """T5ForConditionalGeneration with per-layer kept heads and FFN widths from ``NashT5Config``."""

    config_class = NashT5Config
    # also makes transformers treat the class as custom code, whose weight init skips modules
    # without parameters of their own (the attention / FFN holders of removed sublayers)
    _auto_class = "AutoModelForSeq2SeqLM"

    def __init__(self, config: NashT5Config):
        super().__init__(config)
        self._apply_widths(config)
        self.post_init()

    def _apply_widths(self, config: NashT5Config) -> None:
        stacks = (
            (self.encoder, config.nash_encoder_heads, None, config.nash_encoder_ffn),
            (self.decoder, config.nash_decoder_self_heads, config.nash_decoder_cross_heads,
             config.nash_decoder_ffn),
        )
        for stack, self_heads, cross_heads, ffn in stacks:
            if len(self_heads) != len(stack.block) or len(ffn) != len(stack.block):
                raise ValueError(f"NashT5Config lists {len(self_heads)} head sets and {len(ffn)} FFN "
                                 f"widths for a stack of {len(stack.block)} layers")
            for i, block in enumerate(stack.block):
                _swap_attention(block.layer[0], "SelfAttention", self_heads[i])
                if cross_heads is not None:
                    _swap_attention(block.layer[1], "EncDecAttention", cross_heads[i])
                _resize_ffn(block.layer[-1].DenseReluDense, ffn[i])


__all__ = ["NashT5Attention", "NashT5ForConditionalGeneration"]
