"""Config of a physically pruned BART with per-layer head counts, FFN widths and any d_model.

Self-contained (imports only transformers): copied into exported model directories and loaded
with ``trust_remote_code=True`` through ``auto_map``. ``model_type`` is the stock one, so that code
which only needs the config's family (``AutoTokenizer``, stock ``AutoConfig``) reads the directory
without remote code and without asking; only the model needs ``trust_remote_code=True``.
"""

from transformers import BartConfig


class NashBartConfig(BartConfig):
    """BartConfig plus the kept units of every layer.

    ``d_model`` is the (possibly pruned) hidden size; the attention head size and the embedding
    scale no longer follow from it, so they are stored explicitly.
    """

    model_type = "bart"  # the stock type: stock transformers (AutoTokenizer) reads the directory
    # as the bart model it is; auto_map sends AutoConfig / AutoModelForSeq2SeqLM here
    _auto_class = "AutoConfig"

    nash_head_dim: int | None = None
    """Size of one attention head (the original d_model // num_heads)."""
    nash_embed_scale: float | None = None
    """Token embedding scale (sqrt of the ORIGINAL d_model when scale_embedding, else 1.0)."""
    nash_encoder_num_heads: list[int] | None = None
    """Kept self-attention heads per encoder layer (0 removes the attention)."""
    nash_decoder_self_num_heads: list[int] | None = None
    """Kept self-attention heads per decoder layer."""
    nash_decoder_cross_num_heads: list[int] | None = None
    """Kept cross-attention heads per decoder layer."""
    nash_encoder_ffn: list[int] | None = None
    """FFN width per encoder layer (0 removes the FFN)."""
    nash_decoder_ffn: list[int] | None = None
    """FFN width per decoder layer (0 removes the FFN)."""


__all__ = ["NashBartConfig"]
