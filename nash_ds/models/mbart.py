"""mBART family: BART's modules in pre-LN order, with a final LayerNorm per stack.

Structure and pruning rules are BART's (``BartFamily``); the norms include each stack's final
``layer_norm`` (their keys are kept, sliced along hidden dims like every norm). Pruned exports with
per-layer widths are ``NashMBartConfig`` models (``models/remote/modeling_nash_mbart.py``).
"""

from __future__ import annotations

from typing import Any

from .bart import BartFamily

_TINY = dict(d_model=64, encoder_layers=4, decoder_layers=4, encoder_attention_heads=4, decoder_attention_heads=4,
             encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=512)


def _shape(d_model: int, heads: int, d_ff: int, layers: int) -> dict[str, Any]:
    return dict(model_type="mbart", vocab_size=250054, max_position_embeddings=1024, pad_token_id=1, bos_token_id=0,
                eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2, scale_embedding=True,
                d_model=d_model, encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=d_ff,
                decoder_ffn_dim=d_ff, encoder_layers=layers, decoder_layers=layers)


class MBartFamily(BartFamily):
    """mBART (facebook/mbart-large-*)."""

    name = "mbart"
    ctranslate2_config = {"normalize_before": True}
    """What CTranslate2's converter reads and transformers 5 no longer keeps (pre-norm layers)."""
    model_types = ("mbart",)
    presets = {"tiny-mbart": dict(model_type="mbart", **_TINY)}
    shapes = {"mbart-large": _shape(1024, 16, 4096, 12)}
    shape_aliases = {"facebook/mbart-large-cc25": "mbart-large", "facebook/mbart-large-50": "mbart-large",
                     "facebook/mbart-large-50-many-to-many-mmt": "mbart-large"}

    @property
    def remote_config_class(self) -> type:
        from .remote import NashMBartConfig

        return NashMBartConfig

    @property
    def remote_model_class(self) -> type:
        from .remote import NashMBartForConditionalGeneration

        return NashMBartForConditionalGeneration
