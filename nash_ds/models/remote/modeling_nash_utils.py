"""Layers shared by the Nash modeling files (self-contained: imports only torch)."""

import torch
from torch import nn


class EmptyLinear(nn.Module):
    """Stands in for a Linear with ``in_features`` or ``out_features`` 0 (a removed sublayer).

    Outputs exact zeros of shape [..., out_features] and holds no parameter: zero-element
    parameters break DeepSpeed ZeRO-3 partitioning. ``weight`` and ``bias`` are None so that
    parameter counting and dtype checks in model code see nothing.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        if in_features and out_features:
            raise ValueError(f"EmptyLinear needs a zero dimension, got {in_features} -> {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.weight = None
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros((*x.shape[:-1], self.out_features))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def linear(in_features: int, out_features: int, *, bias: bool) -> nn.Module:
    """nn.Linear, or an EmptyLinear when either side is 0."""
    if in_features == 0 or out_features == 0:
        return EmptyLinear(in_features, out_features)
    return nn.Linear(in_features, out_features, bias=bias)

