"""Distillation from the dense teacher: logit KD over target tokens and hidden-state MSE.

Hidden states are the outputs of each transformer block, captured by forward hooks on the stock
modules. Student decoder layer j is matched to the teacher layer it was copied from
(``kept_decoder_layers[j]``); encoder layers match one to one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
            temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over target tokens (labels != -100)."""
    keep = labels != -100  # [B, T]
    s = student_logits[keep].float() / temperature  # [N, V]
    t = teacher_logits[keep].float() / temperature
    if s.numel() == 0:
        return student_logits.sum() * 0.0
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), log_target=True, reduction="batchmean")
    return kl * temperature**2


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean squared error over positions where ``keep`` ([B, T] bool) is true."""
    diff = (student.float() - teacher.float())[keep]  # [N, d]
    if diff.numel() == 0:
        return student.sum() * 0.0
    return diff.pow(2).mean()


class BlockOutputs:
    """Records the hidden-state output of every block in ``blocks`` during a forward."""

    def __init__(self, blocks: list[nn.Module]):
        self.outputs: list[torch.Tensor | None] = [None] * len(blocks)
        self._handles = [b.register_forward_hook(self._hook(i)) for i, b in enumerate(blocks)]

    def _hook(self, i: int):
        def hook(module, args, output):
            self.outputs[i] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    def clear(self) -> None:
        self.outputs = [None] * len(self.outputs)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def identity_linear(dim: int) -> nn.Linear:
    """Linear(d, d) initialised to the identity: the learned map from student to teacher hidden states."""
    lin = nn.Linear(dim, dim)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(dim))
        lin.bias.zero_()
    return lin
