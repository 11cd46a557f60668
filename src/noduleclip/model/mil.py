"""Attention-based multiple-instance pooling (Ilse et al., 2018) of the nine view embeddings."""

from __future__ import annotations

import torch
from torch import nn


class AttentionMIL(nn.Module):
    """Pool a bag of instance embeddings into one vector with learned, softmax-normalised attention.

    Each instance goes through Linear(D->hidden)+ReLU; its score is Linear(hidden->attention)+Tanh+
    Linear(attention->1); the softmax over the bag weights the hidden vectors. The pooled vector does not
    depend on the order of the instances.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 256, attention_dim: int = 128):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU())
        self.score = nn.Sequential(nn.Linear(hidden_dim, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1))
        self.out_dim = hidden_dim

    def forward(self, instances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, V, D) instances -> pooled (B, hidden_dim) and attention weights (B, V) summing to 1."""
        hidden = self.embed(instances)
        weights = torch.softmax(self.score(hidden).squeeze(-1), dim=-1)
        pooled = torch.einsum("bv,bvh->bh", weights, hidden)
        return pooled, weights
