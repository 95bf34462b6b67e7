"""BART family (also mBART, whose layout is the same with pre-norm and a final norm per stack).

Structure (transformers 5): ``model.model.{encoder,decoder}.layers[i]`` with ``self_attn``,
(``encoder_attn``), ``fc1``, ``fc2`` and LayerNorms; every projection has a bias. BART is post-LN:
each sublayer's LayerNorm acts on the residual sum, ``layernorm_embedding`` on the embeddings.
Encoder and decoder may have different head counts and FFN widths.
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


class BartFamily(Family):
    """BART / mBART."""

    name = "bart"
    model_types = ("bart", "mbart", "nash_bart")  # nash_bart: our pruned exports (per-layer widths)

    # ------------------------------------------------------------------ structure
    @staticmethod
    def _base(model: nn.Module) -> nn.Module:
        """The BartModel inside a ...ForConditionalGeneration (or the model itself)."""
        return model.model if hasattr(model, "model") else model

    def _stack(self, model: nn.Module, stack: str) -> nn.Module:
        check_stack(stack)
        base = self._base(model)
        return base.encoder if stack == "encoder" else base.decoder

    def layers(self, model: nn.Module, stack: str) -> list[nn.Module]:
        """Blocks of ``model.model.encoder.layers`` or ``model.model.decoder.layers``."""
        return list(self._stack(model, stack).layers)

    def attention(self, block: nn.Module, kind: str) -> nn.Module:
        """``self_attn`` or (decoder) ``encoder_attn``."""
        check_kind(kind)
        if kind == "self":
            return block.self_attn
        if not hasattr(block, "encoder_attn"):
            raise ValueError("encoder layers have no cross attention; use kind='self'")
        return block.encoder_attn

    def attn_out_proj(self, attn: nn.Module) -> nn.Linear:
        """``out_proj``: input is the concatenated head outputs."""
        return attn.out_proj

    def attn_in_projs(self, attn: nn.Module) -> list[nn.Linear]:
        """[q_proj, k_proj, v_proj]."""
        return [attn.q_proj, attn.k_proj, attn.v_proj]

    def ffn(self, block: nn.Module) -> nn.Module:
        """The layer itself holds ``fc1``/``fc2``."""
        return block

    def ffn_out_proj(self, block: nn.Module) -> nn.Linear:
        """``fc2``."""
        return block.fc2

    def ffn_in_projs(self, block: nn.Module) -> list[nn.Linear]:
        """[fc1]."""
        return [block.fc1]

    # ------------------------------------------------------------------ hidden dimension
    def token_embeddings(self, model: nn.Module) -> list[nn.Module]:
        """``shared`` and the per-stack ``embed_tokens``."""
        base = self._base(model)
        return _distinct([getattr(base, "shared", None), base.encoder.embed_tokens,
                          base.decoder.embed_tokens])

    def position_embeddings(self, model: nn.Module) -> list[nn.Module]:
        """Learned ``embed_positions`` of both stacks."""
        base = self._base(model)
        return _distinct([base.encoder.embed_positions, base.decoder.embed_positions])

    def norms(self, model: nn.Module) -> list[nn.Module]:
        """Every LayerNorm over d_model: per sublayer, ``layernorm_embedding``, mBART's ``layer_norm``."""
        out: list[nn.Module] = []
        for stack in ("encoder", "decoder"):
            st = self._stack(model, stack)
            out.append(getattr(st, "layernorm_embedding", None))
            for block in st.layers:
                out += [block.self_attn_layer_norm, getattr(block, "encoder_attn_layer_norm", None),
                        block.final_layer_norm]
            out.append(getattr(st, "layer_norm", None))
        return _distinct(out)

    def masked_norm(self, norm: nn.Module, x: torch.Tensor, *, hidden: torch.Tensor) -> torch.Tensor:
        """LayerNorm whose mean and variance cover the kept dims only; output times the mask
        (CoFi's post-norm masking), so removed dims are 0."""
        keep = (hidden != 0).to(torch.float32)
        n = keep.sum().clamp_min(1.0)
        xf = x.to(torch.float32)
        mean = (xf * keep).sum(-1, keepdim=True) / n
        xc = (xf - mean) * keep
        var = xc.pow(2).sum(-1, keepdim=True) / n
        y = xc * torch.rsqrt(var + norm.eps)
        if norm.weight is not None:
            y = y * norm.weight.to(torch.float32)
        if norm.bias is not None:
            y = y + norm.bias.to(torch.float32)
        return (y * hidden.to(torch.float32)).to(x.dtype)

    # ------------------------------------------------------------------ sizes
    def num_layers(self, config: Any, stack: str) -> int:
        """``encoder_layers`` or ``decoder_layers``."""
        check_stack(stack)
        return int(config.encoder_layers if stack == "encoder" else config.decoder_layers)

    def num_heads(self, config: Any, stack: str) -> int:
        """``encoder_attention_heads`` or ``decoder_attention_heads`` (cross attention: decoder's)."""
        check_stack(stack)
        return int(config.encoder_attention_heads if stack == "encoder" else config.decoder_attention_heads)

    def head_dim(self, config: Any, stack: str = "encoder") -> int:
        """d_model // heads of ``stack``."""
        return int(config.d_model) // self.num_heads(config, stack)

    def d_ff(self, config: Any, stack: str) -> int:
        """``encoder_ffn_dim`` or ``decoder_ffn_dim``."""
        check_stack(stack)
        return int(config.encoder_ffn_dim if stack == "encoder" else config.decoder_ffn_dim)

    def has_bias(self, config: Any) -> bool:
        """Every BART projection has a bias."""
        return True

    def num_ffn_in_projs(self, config: Any) -> int:
        """One input projection (fc1)."""
        return 1

    # ------------------------------------------------------------------ student
    def make_student(self, teacher: nn.Module, kept_decoder_layers: Sequence[int]) -> nn.Module:
        """Copy of ``teacher`` whose decoder keeps ``kept_decoder_layers`` (DistilBART's shrink)."""
        decoder = self._stack(teacher, "decoder")
        kept = validate_kept_layers(kept_decoder_layers, num_layers=len(decoder.layers))
        check_unmasked(teacher)
        student = copy.deepcopy(teacher)
        decoder = self._stack(student, "decoder")
        blocks = [decoder.layers[i] for i in kept]
        for i, block in enumerate(blocks):
            block.self_attn.layer_idx = i  # cache slot
            block.encoder_attn.layer_idx = i
        decoder.layers = nn.ModuleList(blocks)
        for cfg in {id(c): c for c in (student.config, decoder.config)}.values():
            cfg.decoder_layers = len(kept)
        return student

    def student_config(self, config: Any, num_kept: int) -> Any:
        """``decoder_layers`` set to ``num_kept``."""
        config = copy.deepcopy(config)
        config.decoder_layers = num_kept
        return config

    def student_source_name(self, name: str, kept_decoder_layers: Sequence[int]) -> str:
        """Decoder layer i <- teacher layer kept[i]."""
        m = re.fullmatch(r"(.*decoder\.layers\.)(\d+)(\..+)", name)
        return name if m is None else f"{m.group(1)}{kept_decoder_layers[int(m.group(2))]}{m.group(3)}"
