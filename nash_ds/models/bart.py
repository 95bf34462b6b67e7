"""BART family.

Structure (transformers 5): ``model.model.{encoder,decoder}.layers[i]`` with ``self_attn``,
(``encoder_attn``), ``fc1``, ``fc2`` and LayerNorms; every projection has a bias. BART is post-LN:
each sublayer's LayerNorm acts on the residual sum, ``layernorm_embedding`` on the embeddings.
Encoder and decoder may have different head counts and FFN widths.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nash_ds.errors import UserError

from .base import Family, Selector, check_kind, check_stack, check_unmasked, config_kwargs, head_rows, heads_of
from .base import distinct_modules as _distinct
from .base import index_of, validate_kept_layers

_PUBLIC = dict(model_type="bart", vocab_size=50265, max_position_embeddings=1024, pad_token_id=1, bos_token_id=0,
               eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2)


def _shape(d_model: int, heads: int, d_ff: int, layers: int) -> dict[str, Any]:
    return dict(_PUBLIC, d_model=d_model, encoder_attention_heads=heads, decoder_attention_heads=heads,
                encoder_ffn_dim=d_ff, decoder_ffn_dim=d_ff, encoder_layers=layers, decoder_layers=layers)


_LAYER = r"^model\.(encoder|decoder)\.layers\.(\d+)\."
_ATTN_KEY = re.compile(_LAYER + r"(self_attn|encoder_attn)\.(\w+)_proj\.(weight|bias)$")
_FFN_KEY = re.compile(_LAYER + r"(fc1|fc2)\.(weight|bias)$")
_EMBED_KEY = re.compile(r"^(model\.shared|model\.(en|de)coder\.(embed_tokens|embed_positions)|lm_head)\.weight$")
_NORM_KEY = re.compile(r"^model\.(encoder|decoder)\.(layers\.\d+\.\w+_layer_norm|layernorm_embedding|layer_norm)\."
                       r"(weight|bias)$")


class BartFamily(Family):
    """BART (post-LN, learned positions, biases everywhere)."""

    name = "bart"
    ctranslate2_config = {"normalize_before": False}
    """What CTranslate2's converter reads and transformers 5 no longer keeps (post-norm layers)."""
    model_types = ("bart",)
    presets = {"tiny-bart": dict(model_type="bart", d_model=64, encoder_layers=4, decoder_layers=4,
                                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                                 decoder_ffn_dim=128, max_position_embeddings=512)}
    shapes = {"bart-base": _shape(768, 12, 3072, 6), "bart-large": _shape(1024, 16, 4096, 12)}
    shape_aliases = {"facebook/bart-large": "bart-large", "facebook/bart-base": "bart-base",
                     "facebook/bart-large-cnn": "bart-large", "facebook/bart-large-xsum": "bart-large"}

    # ------------------------------------------------------------------ building
    def preset_config(self, name: str, *, special: dict[str, int | None]) -> Any:
        """BART conventions: bos 0, pad 1, eos 2; the decoder starts from eos, which generation forces last."""
        from transformers import AutoConfig

        kwargs = dict(self.presets[name])
        ids = dict(vocab_size=256, pad_token_id=1, eos_token_id=2, bos_token_id=0, decoder_start_token_id=None)
        ids.update({k: v for k, v in special.items() if v is not None})
        if ids["decoder_start_token_id"] is None:
            ids["decoder_start_token_id"] = ids["eos_token_id"]
        return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs, **ids, forced_eos_token_id=ids["eos_token_id"])

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

    # ------------------------------------------------------------------ physical pruning
    @property
    def remote_config_class(self) -> type:
        from .remote import NashBartConfig

        return NashBartConfig

    @property
    def remote_model_class(self) -> type:
        from .remote import NashBartForConditionalGeneration

        return NashBartForConditionalGeneration

    def check_prunable(self, config: Any) -> None:
        """Also: one head count for both stacks (the pruned head size is d_model // heads)."""
        super().check_prunable(config)
        if config.encoder_attention_heads != config.decoder_attention_heads:
            raise UserError("pruning BART needs encoder_attention_heads == decoder_attention_heads, got "
                            f"{config.encoder_attention_heads} and {config.decoder_attention_heads}")

    def padded_plan(self, config: Any, plan) -> Any:
        """Stock BART derives head_dim = d_model // heads: with any head dropped every attention keeps all its
        heads, the dropped ones as zeros; an FFN stack of several widths keeps them all the same way. Hidden
        dims cannot be padded (LayerNorm averages over every dim): None, the per-layer class."""
        import dataclasses

        if plan.hidden is not None:
            return None
        full = list(range(config.encoder_attention_heads))
        new = dataclasses.replace(plan)
        sites = ("encoder_heads", "decoder_self_heads", "decoder_cross_heads")
        if any(h != full for site in sites for h in getattr(plan, site)):
            for site in sites:
                setattr(new, site, [list(full) for _ in getattr(plan, site)])
        for stack in ("encoder", "decoder"):
            widths = {len(f) for f in getattr(plan, f"{stack}_ffn")}
            if len(widths) != 1 or 0 in widths:
                setattr(new, f"{stack}_ffn", [list(range(self.d_ff(config, stack))) for _ in getattr(plan, f"{stack}_ffn")])
        return new

    def pruned_config(self, config: Any, plan) -> Any:
        """Stock BartConfig only without hidden pruning, with every head kept (stock BART derives
        head_dim = d_model // heads) and one FFN width per stack; else a NashBartConfig."""
        heads = config.encoder_attention_heads
        full = list(range(heads))
        enc_w, dec_w = {len(f) for f in plan.encoder_ffn}, {len(f) for f in plan.decoder_ffn}
        all_heads = all(h == full for h in plan.encoder_heads + plan.decoder_self_heads + plan.decoder_cross_heads)
        if plan.hidden is None and all_heads and len(enc_w) == len(dec_w) == 1 and 0 not in enc_w | dec_w:
            new = copy.deepcopy(config)
            new.encoder_ffn_dim, new.decoder_ffn_dim = enc_w.pop(), dec_w.pop()
            return new
        fields = {
            "d_model": len(plan.hidden) if plan.hidden is not None else config.d_model,
            "nash_head_dim": config.d_model // heads,
            "nash_embed_scale": math.sqrt(config.d_model) if config.scale_embedding else 1.0,
            "nash_encoder_num_heads": [len(h) for h in plan.encoder_heads],
            "nash_decoder_self_num_heads": [len(h) for h in plan.decoder_self_heads],
            "nash_decoder_cross_num_heads": [len(h) for h in plan.decoder_cross_heads],
            "nash_encoder_ffn": [len(f) for f in plan.encoder_ffn],
            "nash_decoder_ffn": [len(f) for f in plan.decoder_ffn],
        }
        return self.remote_config_class(**{**config_kwargs(config), **fields})

    def pruned_key_selector(self, config: Any, plan, *, stock: bool) -> Selector:
        """Heads: their rows of q/k/v (and biases) and columns of out_proj; FFN dims: rows of fc1 (and its
        bias), columns of fc2; hidden dims: columns of embeddings and inputs, rows of outputs and norms.
        A removed sublayer loses its output bias too. ``final_logits_bias`` is kept whole."""
        hidden = index_of(plan.hidden)
        head_dim = config.d_model // config.encoder_attention_heads

        def select(key: str):
            if key == "final_logits_bias":
                return None, None
            if _EMBED_KEY.match(key):
                return None, hidden
            if _NORM_KEY.match(key):
                return hidden, None
            if m := _ATTN_KEY.match(key):
                stack, i, kind, name, what = m.groups()
                heads = heads_of(plan, stack, "cross" if kind == "encoder_attn" else "self")[int(i)]
                if not heads:
                    return None  # a removed attention holds no weights, output bias included
                rows = head_rows(heads, head_dim)
                if name != "out":
                    return (rows, hidden) if what == "weight" else (rows, None)
                return (hidden, rows) if what == "weight" else (hidden, None)
            if m := _FFN_KEY.match(key):
                stack, i, name, what = m.groups()
                dims = (plan.encoder_ffn if stack == "encoder" else plan.decoder_ffn)[int(i)]
                if not dims:
                    return None  # a removed FFN holds no weights, output bias included
                if name == "fc1":
                    return (index_of(dims), hidden) if what == "weight" else (index_of(dims), None)
                return (hidden, index_of(dims)) if what == "weight" else (hidden, None)
            raise ValueError(f"cannot prune BART state-dict key {key!r}")

        return select
