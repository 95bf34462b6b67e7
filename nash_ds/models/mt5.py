"""mT5 family: T5 v1.1-shaped (gated FFN, its own LM head, no decoder-output scaling), 250k vocabulary.

The module layout is T5's, so everything structural comes from ``T5Family``. What differs: the
model type and config class (``MT5Config``), the presets and shapes, and the head: transformers
5.24's MT5Config forces ``tie_word_embeddings=True`` and keeps no trace of the checkpoint's untied
head, so every mT5 is taken to hold its own (as the published checkpoints do). Pruned exports with
per-layer widths are ``NashT5Config`` models (same modules) without the decoder-output scaling.
"""

from __future__ import annotations

from typing import Any

from .t5 import T5Family

_TINY = dict(d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=4, num_decoder_layers=4,
             relative_attention_num_buckets=8, relative_attention_max_distance=32, feed_forward_proj="gated-gelu")


def _shape(d_model: int, d_kv: int, heads: int, d_ff: int, layers: int) -> dict[str, Any]:
    return dict(model_type="mt5", vocab_size=250112, relative_attention_num_buckets=32, pad_token_id=0,
                eos_token_id=1, decoder_start_token_id=0, feed_forward_proj="gated-gelu", d_model=d_model, d_kv=d_kv,
                num_heads=heads, d_ff=d_ff, num_layers=layers, num_decoder_layers=layers)


class MT5Family(T5Family):
    """mT5 (google/mt5-*): T5's layout and pruning rules, an untied head always."""

    name = "mt5"
    model_types = ("mt5",)
    presets = {"tiny-mt5": dict(model_type="mt5", **_TINY)}
    shapes = {"mt5-small": _shape(512, 64, 6, 1024, 8), "mt5-base": _shape(768, 64, 12, 2048, 12),
              "mt5-large": _shape(1024, 64, 16, 2816, 24), "mt5-xl": _shape(2048, 64, 32, 5120, 24)}
    shape_aliases = {"google/mt5-small": "mt5-small", "google/mt5-base": "mt5-base", "google/mt5-large": "mt5-large",
                     "google/mt5-xl": "mt5-xl"}

    def head_is_untied(self, config: Any) -> bool:
        """Stock mT5 checkpoints hold their own head (exports: as their config's scaling flag says)."""
        if self.is_export(config):
            return super().head_is_untied(config)
        return True

    def pruned_config(self, config: Any, plan) -> Any:
        """As T5, and a ``NashT5Config`` export of an mT5 model does not scale its decoder outputs."""
        new = super().pruned_config(config, plan)
        if self.is_export(new):
            new.scale_decoder_outputs = False
        return new
