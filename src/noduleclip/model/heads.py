"""Projection heads into the shared 256-d space, and the malignancy classifiers."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """Linear(in->out), GELU, Linear(out->out), dropout, residual from the first Linear, LayerNorm."""

    def __init__(self, in_dim: int, out_dim: int = 256, dropout: float = 0.1):
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)
        self.gelu = nn.GELU()
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(out_dim)
        nn.init.kaiming_normal_(self.projection.weight)
        nn.init.kaiming_normal_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.projection(x)
        x = self.dropout(self.fc(self.gelu(projected)))
        return self.layer_norm(x + projected)


def malignancy_head(embed_dim: int = 256, num_classes: int = 2) -> nn.Linear:
    """A linear classifier from an L2-normalised embedding to benign/malignant logits."""
    return nn.Linear(embed_dim, num_classes)
