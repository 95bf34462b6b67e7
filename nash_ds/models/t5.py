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
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .base import Family, check_kind, check_stack, check_unmasked, validate_kept_layers
from .base import distinct_modules as _distinct


class T5Family(Family):
    """T5 / T5 v1.1 / Flan-T5 / mT5 (same module layout)."""

    name = "t5"
    model_types = ("t5", "mt5", "nash_t5")  # nash_t5: our pruned exports (per-layer widths)

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
