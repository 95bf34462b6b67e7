"""BART with per-layer head counts, FFN widths and any d_model (a physically pruned model).

Self-contained (imports only torch, transformers and its sibling files): copied into the
exported model directory and loaded with ``AutoModelForSeq2SeqLM.from_pretrained(dir,
trust_remote_code=True)``. The model is the stock ``BartForConditionalGeneration``; ``__init__``
swaps every attention for ``NashBartAttention`` (explicit head size and count, possibly zero)
and resizes the FFNs per layer. A removed sublayer (0 heads / 0 dims) has no output bias.
"""

from collections.abc import Callable

from torch import nn
from transformers import BartForConditionalGeneration
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bart.modeling_bart import BartAttention, eager_attention_forward

from .configuration_nash_bart import NashBartConfig
from .modeling_nash_utils import linear, project_kv


class NashBartAttention(BartAttention):
    """BartAttention with ``num_heads`` heads of size ``head_dim`` over a ``embed_dim`` stream.

    Stock BART ties head_dim to embed_dim // num_heads; after pruning neither holds. With zero
    heads the output is exactly zero (no out_proj bias); the cache then holds one zero head so
    that its sequence length stays right during generation.
    """

    def __init__(self, *, embed_dim: int, num_heads: int, head_dim: int, dropout: float, is_decoder: bool,
                 is_causal: bool, config, layer_idx: int | None):
        nn.Module.__init__(self)  # BartAttention.__init__ insists on embed_dim == num_heads * head_dim
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.config = config
        self.scaling = head_dim**-0.5
        self.is_decoder = is_decoder
        self.is_causal = is_causal
        self.layer_idx = layer_idx
        inner = num_heads * head_dim
        self.k_proj = linear(embed_dim, inner, bias=True)
        self.v_proj = linear(embed_dim, inner, bias=True)
        self.q_proj = linear(embed_dim, inner, bias=True)
        self.out_proj = linear(inner, embed_dim, bias=True)  # an EmptyLinear (no bias) for 0 heads

    def forward(self, hidden_states, key_value_states=None, cache=None, attention_mask=None, **kwargs):
        input_shape = hidden_states.shape[:-1]  # (batch, q_len)
        head_shape = (self.num_heads, self.head_dim)  # explicit: -1 fails with 0 heads
        # (batch, heads, q_len, head_dim)
        query_states = self.q_proj(hidden_states).view(*input_shape, *head_shape).transpose(1, 2)

        key_states, value_states = project_kv(k_proj=self.k_proj, v_proj=self.v_proj, hidden_states=hidden_states,
                                              key_value_states=key_value_states, cache=cache,
                                              layer_idx=self.layer_idx, head_shape=head_shape, kwargs=kwargs)

        attn_weights = None
        if self.num_heads == 0:
            attn_output = query_states.new_zeros((*input_shape, 0))
        else:
            attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward)
            attn_output, attn_weights = attention_interface(
                self, query_states, key_states, value_states, attention_mask,
                dropout=0.0 if not self.training else self.dropout, scaling=self.scaling, **kwargs)
            attn_output = attn_output.reshape(*input_shape, self.num_heads * self.head_dim).contiguous()
        attn_output = self.out_proj(attn_output)  # (batch, q_len, embed_dim)
        return attn_output, attn_weights


def _swap_attention(layer: nn.Module, attr: str, num_heads: int, head_dim: int) -> None:
    old = getattr(layer, attr)
    setattr(layer, attr, NashBartAttention(
        embed_dim=old.embed_dim, num_heads=num_heads, head_dim=head_dim, dropout=old.dropout,
        is_decoder=old.is_decoder, is_causal=old.is_causal, config=old.config, layer_idx=old.layer_idx))


def _resize_ffn(layer: nn.Module, width: int) -> None:
    d_model = layer.fc2.out_features
    layer.fc1 = linear(d_model, width, bias=True)
    layer.fc2 = linear(width, d_model, bias=True)  # an EmptyLinear (no bias) for width 0


def build_with_widths(stock_init, model: nn.Module, config) -> None:
    """Run the stock ``stock_init(model, config)`` (BART or mBART), then give every layer its kept heads and
    FFN width from the Nash config. Shared by NashBart and NashMBart (same layer layout)."""
    heads = (config.encoder_attention_heads, config.decoder_attention_heads)
    # the stock attentions need d_model % heads == 0; they are all replaced below
    config.encoder_attention_heads = config.decoder_attention_heads = 1
    try:
        stock_init(model, config)
    finally:
        config.encoder_attention_heads, config.decoder_attention_heads = heads
    base = model.model
    for emb in (base.shared, base.encoder.embed_tokens, base.decoder.embed_tokens):
        emb.embed_scale = config.nash_embed_scale
    stacks = (
        (base.encoder.layers, config.nash_encoder_num_heads, None, config.nash_encoder_ffn),
        (base.decoder.layers, config.nash_decoder_self_num_heads, config.nash_decoder_cross_num_heads,
         config.nash_decoder_ffn),
    )
    for layers, self_heads, cross_heads, ffn in stacks:
        if len(self_heads) != len(layers) or len(ffn) != len(layers):
            raise ValueError(f"{type(config).__name__} lists {len(self_heads)} head counts and {len(ffn)} FFN "
                             f"widths for a stack of {len(layers)} layers")
        for i, layer in enumerate(layers):
            _swap_attention(layer, "self_attn", self_heads[i], config.nash_head_dim)
            if cross_heads is not None:
                _swap_attention(layer, "encoder_attn", cross_heads[i], config.nash_head_dim)
            _resize_ffn(layer, ffn[i])


class NashBartForConditionalGeneration(BartForConditionalGeneration):
    """BartForConditionalGeneration with per-layer head counts and FFN widths from ``NashBartConfig``."""

    config_class = NashBartConfig
    _auto_class = "AutoModelForSeq2SeqLM"

    def __init__(self, config: NashBartConfig):
        build_with_widths(BartForConditionalGeneration.__init__, self, config)
        self.post_init()


__all__ = ["NashBartAttention", "NashBartForConditionalGeneration", "build_with_widths"]
