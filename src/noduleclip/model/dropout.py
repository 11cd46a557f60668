"""Dropout whose mask is cheap to draw on a CPU; the model uses it in place of every `nn.Dropout`.

torch's dropout draws its CPU mask with `bernoulli_`, one random number per element: on a CPU training
step of the demo's model that was about a fifth of the step, most of it in LoRA's dropout on the
inputs of Q, K and V (three masks per block over every token of nine views). `FastDropout` reads its
mask from 16 random bits per element, two elements per 32-bit draw: about four times faster, and the
same distribution up to a drop probability rounded to a multiple of 1/65536 (exact for 0.25, the
paper's value), with the kept elements scaled so that the expectation is unchanged. On a GPU it is
torch's own fused dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16


class FastDropout(nn.Module):
    """Drop each element with probability `p` (in steps of 1/65536) in training mode; identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        dropped = round(p * _LEVELS)
        self.threshold = dropped - _LEVELS // 2  # int16 values below it are dropped
        self.scale = _LEVELS / (_LEVELS - dropped)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        words = torch.randint(-(1 << 31), (1 << 31) - 1, ((n + 1) // 2,), dtype=torch.int32)
        keep = words.view(torch.int16)[:n].view(x.shape) >= self.threshold
        return x * keep * self.scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(module: nn.Module) -> int:
    """Replace every `nn.Dropout` under `module` (LoRA's, the towers', the heads') by `FastDropout`; returns how
    many."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p))
                replaced += 1
    return replaced
