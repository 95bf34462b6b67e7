"""T5 family: original T5 (relu FFN, tied LM head) and T5 v1.1 / Flan-T5 (gated FFN, untied head).

One module for both: the FFN kind comes from ``config.is_gated_act`` (``feed_forward_proj``).
Structure (transformers 5): ``model.{encoder,decoder}.block[i].layer`` = [self-attn, (cross-attn),
FFN]; attention projections q, k, v, o (no biases); FFN ``wi`` or ``wi_0``/``wi_1``, then ``wo``.
Only block 0 of each stack owns ``relative_attention_bias``; later blocks reuse the bias it computes.

Note for physical pruning of hidden dims: with ``config.scale_decoder_outputs`` (T5 v1.0, tied
head) the decoder output is scaled by d_model**-0.5 before the LM head. A model with fewer hidden
dims must keep the ORIGINAL factor (fold sqrt(d_new / d_old) into an untied LM head, or keep the
factor some other way); stock T5 would use the new d_model.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .base import Family, Selector, check_kind, check_stack, check_unmasked, config_kwargs, head_rows, heads_of
from .base import distinct_modules as _distinct
from .base import index_of, validate_kept_layers


_TINY = dict(d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=4, num_decoder_layers=4,
             relative_attention_num_buckets=8, relative_attention_max_distance=32)
_PUBLIC = dict(model_type="t5", vocab_size=32128, relative_attention_num_buckets=32, pad_token_id=0, eos_token_id=1,
               decoder_start_token_id=0)
_PUBLIC_V11 = dict(_PUBLIC, feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def _shape(d_model: int, d_kv: int, heads: int, d_ff: int, layers: int, base: dict = _PUBLIC) -> dict[str, Any]:
    return dict(base, d_model=d_model, d_kv=d_kv, num_heads=heads, d_ff=d_ff, num_layers=layers,
                num_decoder_layers=layers)


_ATTN_KEY = re.compile(r"^(encoder|decoder)\.block\.(\d+)\.layer\.(\d+)\.(SelfAttention|EncDecAttention)\.(\w+)"
                       r"\.weight$")
_FFN_KEY = re.compile(r"^(encoder|decoder)\.block\.(\d+)\.layer\.(\d+)\.DenseReluDense\.(wi|wi_0|wi_1|wo)\.weight$")
_EMBED_KEY = re.compile(r"^(shared|encoder\.embed_tokens|decoder\.embed_tokens|lm_head)\.weight$")
_NORM_KEY = re.compile(r"^(encoder|decoder)\.(block\.\d+\.layer\.\d+\.layer_norm|final_layer_norm)\.weight$")


class T5Family(Family):
    """T5 and T5 v1.1 / Flan-T5 (same module layout; the FFN kind comes from ``feed_forward_proj``)."""

    name = "t5"
    model_types = ("t5",)
    shared_head_positions = True
    presets = {
        "tiny-t5": dict(model_type="t5", feed_forward_proj="relu", **_TINY),
        # the demo's: 8+8 layers, so that decoder depth dominates generation time as in real T5 (transformers
        # 5.24 sizes T5's generation cache by the encoder's depth: keep the decoder no deeper than the encoder)
        "demo-t5": dict(model_type="t5", feed_forward_proj="relu",
                        **{**_TINY, "num_layers": 8, "num_decoder_layers": 8}),
        "tiny-t5-v1_1": dict(model_type="t5", feed_forward_proj="gated-gelu", tie_word_embeddings=False, **_TINY),
    }
    shapes = {
        "t5-small": _shape(512, 64, 8, 2048, 6),
        "t5-base": _shape(768, 64, 12, 3072, 12),
        "t5-large": _shape(1024, 64, 16, 4096, 24),
        "t5-3b": _shape(1024, 128, 32, 16384, 24),
        "t5-11b": _shape(1024, 128, 128, 65536, 24),
        "t5-v1_1-base": _shape(768, 64, 12, 2048, 12, _PUBLIC_V11),
        "t5-v1_1-large": _shape(1024, 64, 16, 2816, 24, _PUBLIC_V11),
        "t5-xl": _shape(2048, 64, 32, 5120, 24, _PUBLIC_V11),
        "t5-xxl": _shape(4096, 64, 64, 10240, 24, _PUBLIC_V11),
    }
    """t5-xl / t5-xxl are T5 v1.1 / Flan-T5 XL / XXL (gated FFN, untied head)."""
    shape_aliases = {
        "google/flan-t5-base": "t5-v1_1-base", "google/flan-t5-large": "t5-v1_1-large",
        "google/flan-t5-xl": "t5-xl", "google/flan-t5-xxl": "t5-xxl", "google/t5-v1_1-base": "t5-v1_1-base",
        "google/t5-v1_1-large": "t5-v1_1-large", "google/t5-v1_1-xl": "t5-xl", "google/t5-v1_1-xxl": "t5-xxl",
        "flan-t5-xl": "t5-xl", "t5-v1_1-xl": "t5-xl", "google-t5/t5-small": "t5-small", "google-t5/t5-base": "t5-base",
        "google-t5/t5-large": "t5-large", "google-t5/t5-3b": "t5-3b", "google-t5/t5-11b": "t5-11b"}

    # ------------------------------------------------------------------ building
    def preset_config(self, name: str, *, special: dict[str, int | None]) -> Any:
        """T5 conventions: pad 0, eos 1, no bos; the decoder starts from pad."""
        from transformers import AutoConfig

        kwargs = dict(self.presets[name])
        ids = dict(vocab_size=256, pad_token_id=0, eos_token_id=1, bos_token_id=None, decoder_start_token_id=None)
        ids.update({k: v for k, v in special.items() if v is not None})
        if ids["decoder_start_token_id"] is None:
            ids["decoder_start_token_id"] = ids["pad_token_id"]
        return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs, **ids)

    def head_is_untied(self, config: Any) -> bool:
        """T5 v1.1 / Flan-T5 hold their own head; transformers 5 records that as ``scale_decoder_outputs=False``
        (their checkpoints say ``tie_word_embeddings: false``, which T5Config turns into that flag)."""
        return getattr(config, "scale_decoder_outputs", True) is False

    # ------------------------------------------------------------------ structure
    def _stack(self, model: nn.Module, stack: str) -> nn.Module:
        check_stack(stack)
        return model.encoder if stack == "encoder" else model.decoder

    def layers(self, model: nn.Module, stack: str) -> list[nn.Module]:
        """Blocks of ``model.encoder.block`` or ``model.decoder.block``."""
        return list(self._stack(model, stack).block)

    def attention(self, block: nn.Module, kind: str) -> nn.Module:
        """``layer[0].SelfAttention`` or (decoder) ``layer[1].EncDecAttention``."""
        check_kind(kind)
        if kind == "self":
            return block.layer[0].SelfAttention
        if not block.is_decoder:
            raise ValueError("encoder blocks have no cross attention; use kind='self'")
        return block.layer[1].EncDecAttention

    def attn_out_proj(self, attn: nn.Module) -> nn.Linear:
        """``o``: input is the concatenated head outputs."""
        return attn.o

    def attn_in_projs(self, attn: nn.Module) -> list[nn.Linear]:
        """[q, k, v]."""
        return [attn.q, attn.k, attn.v]

    def ffn(self, block: nn.Module) -> nn.Module:
        """``layer[-1].DenseReluDense``."""
        return block.layer[-1].DenseReluDense

    def ffn_out_proj(self, block: nn.Module) -> nn.Linear:
        """``wo``."""
        return self.ffn(block).wo

    def ffn_in_projs(self, block: nn.Module) -> list[nn.Linear]:
        """[wi] (relu) or [wi_0, wi_1] (gated)."""
        ffn = self.ffn(block)
        return [ffn.wi_0, ffn.wi_1] if hasattr(ffn, "wi_0") else [ffn.wi]

    # ------------------------------------------------------------------ hidden dimension
    def token_embeddings(self, model: nn.Module) -> list[nn.Module]:
        """``shared`` and the per-stack ``embed_tokens`` (tied weights, distinct modules)."""
        return _distinct([getattr(model, "shared", None), model.encoder.embed_tokens,
                          model.decoder.embed_tokens])

    def norms(self, model: nn.Module) -> list[nn.Module]:
        """Every sublayer's pre-norm and both stacks' ``final_layer_norm`` (RMSNorm)."""
        out: list[nn.Module] = []
        for stack in ("encoder", "decoder"):
            for block in self.layers(model, stack):
                out.extend(sub.layer_norm for sub in block.layer)
            out.append(self._stack(model, stack).final_layer_norm)
        return _distinct(out)

    def hidden_mask_outputs(self, model: nn.Module) -> list[nn.Module]:
        """The embedding modules the stacks call (the residual stream starts there)."""
        return _distinct([model.encoder.embed_tokens, model.decoder.embed_tokens])

    def masked_norm(self, norm: nn.Module, x: torch.Tensor, *, hidden: torch.Tensor) -> torch.Tensor:
        """T5 RMSNorm with the mean square taken over the kept dims only (zeros elsewhere).

        Written so that with every dim kept it is bit-identical to ``T5LayerNorm.forward``.
        """
        keep = (hidden != 0).to(torch.float32)
        # mean over kept dims == mean over all dims * d / n_kept (exactly 1.0 when all are kept)
        scale = keep.numel() / keep.sum().clamp_min(1.0)
        variance = (x.to(torch.float32).pow(2) * keep).mean(-1, keepdim=True) * scale
        y = x * torch.rsqrt(variance + norm.variance_epsilon)
        if norm.weight.dtype in (torch.float16, torch.bfloat16):
            y = y.to(norm.weight.dtype)
        return norm.weight * y * keep.to(norm.weight.dtype)

    def relative_attention_bias(self, model: nn.Module, stack: str) -> nn.Embedding | None:
        """``block[0].layer[0].SelfAttention.relative_attention_bias`` ([buckets, H])."""
        attn = self.attention(self.layers(model, stack)[0], "self")
        return getattr(attn, "relative_attention_bias", None)

    # ------------------------------------------------------------------ sizes
    def num_layers(self, config: Any, stack: str) -> int:
        """``num_layers`` (encoder) or ``num_decoder_layers``."""
        check_stack(stack)
        if stack == "encoder":
            return int(config.num_layers)
        n = config.num_decoder_layers
        return int(config.num_layers if n is None else n)

    def num_heads(self, config: Any, stack: str) -> int:
        """``num_heads`` (same in both stacks)."""
        check_stack(stack)
        return int(config.num_heads)

    def head_dim(self, config: Any, stack: str = "encoder") -> int:
        """``d_kv``."""
        return int(config.d_kv)

    def d_ff(self, config: Any, stack: str) -> int:
        """``d_ff`` (same in both stacks)."""
        check_stack(stack)
        return int(config.d_ff)

    def has_bias(self, config: Any) -> bool:
        """T5 projections have no biases."""
        return False

    def num_ffn_in_projs(self, config: Any) -> int:
        """2 for gated FFNs (wi_0, wi_1), else 1."""
        return 2 if getattr(config, "is_gated_act", False) else 1

    # ------------------------------------------------------------------ student
    def make_student(self, teacher: nn.Module, kept_decoder_layers: Sequence[int]) -> nn.Module:
        """Copy of ``teacher`` whose decoder keeps ``kept_decoder_layers``; new block 0 owns the
        teacher's block-0 relative attention bias whatever block it was copied from."""
        kept = validate_kept_layers(kept_decoder_layers, num_layers=len(teacher.decoder.block))
        check_unmasked(teacher)
        student = copy.deepcopy(teacher)
        bias0 = getattr(student.decoder.block[0].layer[0].SelfAttention, "relative_attention_bias", None)
        blocks = [student.decoder.block[i] for i in kept]
        for i, block in enumerate(blocks):
            sa = block.layer[0].SelfAttention
            if i == 0 and not sa.has_relative_attention_bias and bias0 is not None:
                sa.has_relative_attention_bias = True
                sa.relative_attention_bias = bias0
            elif i > 0 and sa.has_relative_attention_bias:
                sa.has_relative_attention_bias = False
                del sa.relative_attention_bias
            sa.layer_idx = i  # cache slot
            block.layer[1].EncDecAttention.layer_idx = i
        student.decoder.block = nn.ModuleList(blocks)
        student.config.num_decoder_layers = len(kept)
        student.decoder.config.num_layers = len(kept)
        return student

    def student_config(self, config: Any, num_kept: int) -> Any:
        """``num_decoder_layers`` set to ``num_kept``."""
        config = copy.deepcopy(config)
        config.num_decoder_layers = num_kept
        return config

    def student_source_name(self, name: str, kept_decoder_layers: Sequence[int]) -> str:
        """Decoder block i <- teacher block kept[i]; the relative attention bias <- teacher block 0's."""
        m = re.fullmatch(r"decoder\.block\.(\d+)\.(.+)", name)
        if m is None:
            return name
        rest = m.group(2)
        source = 0 if "relative_attention_bias" in rest else kept_decoder_layers[int(m.group(1))]
        return f"decoder.block.{source}.{rest}"

    # ------------------------------------------------------------------ physical pruning
    @property
    def remote_config_class(self) -> type:
        from .remote import NashT5Config

        return NashT5Config

    @property
    def remote_model_class(self) -> type:
        from .remote import NashT5ForConditionalGeneration

        return NashT5ForConditionalGeneration

    @staticmethod
    def _stock_heads(plan) -> int | None:
        """The head count when a stock T5Config fits the plan's heads: every attention keeps the same number,
        and within a stack all self-attentions the same set (they share one relative position bias)."""
        counts = {len(h) for h in plan.encoder_heads + plan.decoder_self_heads + plan.decoder_cross_heads}
        same_sets = all(h == plan.encoder_heads[0] for h in plan.encoder_heads) and all(
            h == plan.decoder_self_heads[0] for h in plan.decoder_self_heads)
        return counts.pop() if len(counts) == 1 and 0 not in counts and same_sets else None

    @staticmethod
    def _stock_ffn(plan) -> int | None:
        """The FFN width when every FFN of both stacks keeps the same (non-zero) number of dims."""
        widths = {len(f) for f in plan.encoder_ffn + plan.decoder_ffn}
        return widths.pop() if len(widths) == 1 and 0 not in widths else None

    @classmethod
    def _stock_widths(cls, plan) -> tuple[int, int] | None:
        """(num_heads, d_ff) when a stock T5Config fits the plan, else None."""
        heads, ffn = cls._stock_heads(plan), cls._stock_ffn(plan)
        return None if heads is None or ffn is None else (heads, ffn)

    def padded_plan(self, config: Any, plan) -> Any:
        """T5Config holds one head count and one FFN width for both stacks: where the plan's do not fit that
        (NASH narrows the encoder only), every attention (or FFN) keeps all its units and the dropped ones
        become zeros. Hidden dims stay physically pruned (``d_model``)."""
        import dataclasses

        full_heads = list(range(config.num_heads))
        full_ffn = list(range(config.d_ff))
        new = dataclasses.replace(plan)
        if self._stock_heads(plan) is None:
            new.encoder_heads, new.decoder_self_heads, new.decoder_cross_heads = (
                [list(full_heads) for _ in h] for h in (plan.encoder_heads, plan.decoder_self_heads,
                                                         plan.decoder_cross_heads))
        if self._stock_ffn(plan) is None:
            new.encoder_ffn, new.decoder_ffn = ([list(full_ffn) for _ in f] for f in (plan.encoder_ffn, plan.decoder_ffn))
        return new

    def pruned_config(self, config: Any, plan) -> Any:
        """Stock T5Config with new num_heads / d_ff / d_model when they fit, else a NashT5Config
        (``num_heads`` stays the original count there: the position bias covers all heads)."""
        d_model = len(plan.hidden) if plan.hidden is not None else config.d_model
        stock = self._stock_widths(plan)
        if stock is not None:
            new = copy.deepcopy(config)
            new.num_heads, new.d_ff = stock
            new.d_model = d_model
            return new
        fields = {
            "d_model": d_model,
            "nash_encoder_heads": [list(h) for h in plan.encoder_heads],
            "nash_decoder_self_heads": [list(h) for h in plan.decoder_self_heads],
            "nash_decoder_cross_heads": [list(h) for h in plan.decoder_cross_heads],
            "nash_encoder_ffn": [len(f) for f in plan.encoder_ffn],
            "nash_decoder_ffn": [len(f) for f in plan.decoder_ffn],
        }
        return self.remote_config_class(**{**config_kwargs(config), **fields})

    def pruned_key_selector(self, config: Any, plan, *, stock: bool) -> Selector:
        """Heads: their d_kv rows of q/k/v and columns of o (and, for a stock config, their columns of the
        relative position bias); FFN dims: rows of wi / wi_0 / wi_1, columns of wo; hidden dims: columns
        of embeddings and projections' inputs, rows of outputs and norms."""
        hidden = index_of(plan.hidden)
        d_kv = config.d_kv

        def select(key: str):
            if _EMBED_KEY.match(key):  # [vocab, d_model]
                return None, hidden
            if _NORM_KEY.match(key):
                return hidden, None
            if m := _ATTN_KEY.match(key):
                stack, i, _, kind, name = m.groups()
                heads = heads_of(plan, stack, "cross" if kind == "EncDecAttention" else "self")[int(i)]
                if name == "relative_attention_bias":  # [num_buckets, H]: all heads unless stock
                    return None, (index_of(heads) if stock else None)
                if not heads:
                    return None  # a removed attention holds no projection weights
                rows = head_rows(heads, d_kv)
                return (hidden, rows) if name == "o" else (rows, hidden)
            if m := _FFN_KEY.match(key):
                stack, i, _, name = m.groups()
                dims = (plan.encoder_ffn if stack == "encoder" else plan.decoder_ffn)[int(i)]
                if not dims:
                    return None  # a removed FFN holds no weights
                return (hidden, index_of(dims)) if name == "wo" else (index_of(dims), hidden)
            raise ValueError(f"cannot prune T5 state-dict key {key!r}")

        return select

    def fold_pruned_state(self, config: Any, plan, state: dict[str, torch.Tensor]) -> None:
        """T5 v1.0 scales decoder outputs by d_model**-0.5 before the LM head; keep the ORIGINAL scale."""
        if plan.hidden is not None and getattr(config, "scale_decoder_outputs", False):
            key = "decoder.final_layer_norm.weight"
            state[key] = state[key] * math.sqrt(len(plan.hidden) / config.d_model)
