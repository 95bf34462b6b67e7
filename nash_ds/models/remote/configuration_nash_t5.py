"""Config of a physically pruned T5 with per-layer head sets and FFN widths.

Self-contained (imports only transformers): copied into exported model directories and loaded
with ``trust_remote_code=True`` through ``auto_map``. ``model_type`` is the stock one, so that code
which only needs the config's family (``AutoTokenizer``, stock ``AutoConfig``) reads the directory
without remote code and without asking; only the model needs ``trust_remote_code=True``.
"""

from transformers import T5Config


class NashT5Config(T5Config):
    """T5Config plus the kept units of every layer.

    ``num_heads`` stays the ORIGINAL head count: layer 0 of each stack computes the relative
    position bias for all of them, and every attention slices its kept heads out of it.
    ``d_ff`` stays the original width (only used for initialisation scales).
    """

    model_type = "t5"  # the stock type: stock transformers (AutoTokenizer) reads the directory
    # as the t5 model it is; auto_map sends AutoConfig / AutoModelForSeq2SeqLM here
    _auto_class = "AutoConfig"

    nash_encoder_heads: list[list[int]] | None = None
    """Kept self-attention head indices (original numbering) per encoder layer."""
    nash_decoder_self_heads: list[list[int]] | None = None
    """Kept self-attention head indices per decoder layer."""
    nash_decoder_cross_heads: list[list[int]] | None = None
    """Kept cross-attention head indices per decoder layer."""
    nash_encoder_ffn: list[int] | None = None
    """FFN width per encoder layer (0 removes the FFN)."""
    nash_decoder_ffn: list[int] | None = None
    """FFN width per decoder layer (0 removes the FFN)."""


__all__ = ["NashT5Config"]
