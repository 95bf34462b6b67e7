"""mBART with per-layer head counts, FFN widths and any d_model (a physically pruned model).

Self-contained (imports only torch, transformers and its sibling files): copied into the exported
model directory and loaded with ``AutoModelForSeq2SeqLM.from_pretrained(dir, trust_remote_code=True)``.
The model is the stock ``MBartForConditionalGeneration`` (pre-LN, a final LayerNorm per stack); its
attentions are swapped for ``NashBartAttention`` (MBartAttention is the same module) and its FFNs
resized per layer, as in ``modeling_nash_bart``.
"""

from transformers import MBartForConditionalGeneration

from .configuration_nash_mbart import NashMBartConfig
from .modeling_nash_bart import build_with_widths


class NashMBartForConditionalGeneration(MBartForConditionalGeneration):
    """MBartForConditionalGeneration with per-layer head counts and FFN widths from ``NashMBartConfig``."""

    config_class = NashMBartConfig
    _auto_class = "AutoModelForSeq2SeqLM"

    def __init__(self, config: NashMBartConfig):
        build_with_widths(MBartForConditionalGeneration.__init__, self, config)
        self.post_init()


__all__ = ["NashMBartForConditionalGeneration"]
