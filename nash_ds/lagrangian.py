"""Target sparsity schedule and the Lagrangian penalty (CoFi / NASH).

    penalty = lambda_1 (s - t) + lambda_2 (s - t)^2

minimised over the model and log_alpha, *maximised* over the lambdas. The lambdas pass through
a gradient-reversal function, so any optimizer (and any ZeRO stage) does gradient ascent on them
with a positive learning rate.
"""

from __future__ import annotations

import torch
from torch import nn


def target_sparsity(step: int, *, final: float, warmup_steps: int) -> float:
    """Linear ramp from 0 to ``final`` over ``warmup_steps``, then constant."""
    if warmup_steps <= 0:
        return final
    return final * min(1.0, step / warmup_steps)


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


class Lagrangian(nn.Module):
    """Holds lambda_1, lambda_2 (start at 0); ``forward(expected, target)`` returns the penalty."""

    def __init__(self):
        super().__init__()
        self.lambdas = nn.Parameter(torch.zeros(2))

    def forward(self, expected: torch.Tensor, target: float) -> torch.Tensor:
        lam = _Reverse.apply(self.lambdas)
        gap = expected - target
        return lam[0] * gap + lam[1] * gap * gap
