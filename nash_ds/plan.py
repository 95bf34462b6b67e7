"""The pruning plan: what a physically pruned model keeps, independent of how it was learned.

Masks (nash_ds.masks) produce a plan from deterministic masks; families (nash_ds.models.*)
turn a plan into a smaller model; the finalizer writes it into ``pruning_report.json``.
Indices always refer to the *student* before physical pruning (the model whose decoder
has already been cut to ``kept_decoder_layers`` of the teacher).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from nash_ds.errors import UserError


@dataclass
class PruningPlan:
    """Kept units per layer. An empty list removes the whole sublayer (attention or FFN)."""

    encoder_heads: list[list[int]]
    """Kept self-attention head indices per encoder layer."""
    decoder_self_heads: list[list[int]]
    """Kept self-attention head indices per decoder layer."""
    decoder_cross_heads: list[list[int]]
    """Kept cross-attention head indices per decoder layer."""
    encoder_ffn: list[list[int]]
    """Kept FFN intermediate dimensions per encoder layer."""
    decoder_ffn: list[list[int]]
    """Kept FFN intermediate dimensions per decoder layer."""
    hidden: list[int] | None = None
    """Kept hidden (d_model) dimensions shared by the whole model (CoFi); None keeps all."""
    kept_decoder_layers: list[int] = field(default_factory=list)
    """Teacher decoder layer each student decoder layer was copied from (informational)."""
    stock_shape: bool = False
    """Export the stock class (``prune.uniform_widths``): what its config cannot express (T5: one head count and
    FFN width for both stacks; BART: head_dim = d_model / heads) is kept as zero-padded units, exactly the masked
    model's computation."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PruningPlan":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"unknown pruning plan keys {sorted(unknown)}; expected {sorted(names)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def full(cls, *, num_encoder_layers: int, num_decoder_layers: int, num_heads: int,
             encoder_ffn: int, decoder_ffn: int) -> "PruningPlan":
        """A plan that keeps everything (useful as a starting point and in tests)."""
        heads = list(range(num_heads))
        return cls(
            encoder_heads=[list(heads) for _ in range(num_encoder_layers)],
            decoder_self_heads=[list(heads) for _ in range(num_decoder_layers)],
            decoder_cross_heads=[list(heads) for _ in range(num_decoder_layers)],
            encoder_ffn=[list(range(encoder_ffn)) for _ in range(num_encoder_layers)],
            decoder_ffn=[list(range(decoder_ffn)) for _ in range(num_decoder_layers)],
            hidden=None,
            kept_decoder_layers=list(range(num_decoder_layers)),
        )
