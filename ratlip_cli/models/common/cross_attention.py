"""CAE-GAN's cross-attention encoder (Tan et al., Computer Science 49(2), 2022), from the paper's formulas:

    q_v = Linear(f_v); k_s, v_s = Linear(s)
    l   = dropout(softmax(lambda_c q_v k_s^T)) v_s           image regions attend over words
    l_c = Norm(A1 l + B1)
    q_l, k_l, v_l = Linear(l_c)
    l_cs = dropout(softmax(lambda_s q_l k_l^T)) v_l           self-attention over the regions
    f_c = Norm(A2 l_cs + B2)

One head; lambda = 1/sqrt(dim) (the paper gives no value); Norm = LayerNorm; no residual paths (the
formulas show none). The paper also names q_s, k_v, v_v, which its formulas never use: omitted.
The pooled vector is the mean of f_c over regions. See docs/architecture.md for these choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class CrossAttentionOutput:
    """f_c per region (B, N, dim), its mean over regions (B, dim), and both attention maps."""

    regions: torch.Tensor
    vector: torch.Tensor
    cross_weights: torch.Tensor  # (B, N, T): region n over word t
    self_weights: torch.Tensor  # (B, N, N)


class CrossAttentionEncoder(nn.Module):
    """Aligns word features (B, T, word_dim) with query features (B, N, query_dim) into f_c (B, N, dim)."""

    def __init__(self, word_dim: int, query_dim: int, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.q_v = nn.Linear(query_dim, dim)
        self.k_s = nn.Linear(word_dim, dim)
        self.v_s = nn.Linear(word_dim, dim)
        self.a1 = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.q_l = nn.Linear(dim, dim)
        self.k_l = nn.Linear(dim, dim)
        self.v_l = nn.Linear(dim, dim)
        self.a2 = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(
        self, words: torch.Tensor, queries: torch.Tensor, word_mask: torch.Tensor | None = None
    ) -> CrossAttentionOutput:
        """`word_mask` (B, T) is True at padding tokens, which then get zero attention."""
        score = self.scale * self.q_v(queries) @ self.k_s(words).transpose(1, 2)
        if word_mask is not None:
            score = score.masked_fill(word_mask[:, None, :], float("-inf"))
        cross = torch.softmax(score, dim=-1)
        l_c = self.norm1(self.a1(self.dropout(cross) @ self.v_s(words)))
        q, k, v = self.q_l(l_c), self.k_l(l_c), self.v_l(l_c)
        self_w = torch.softmax(self.scale * q @ k.transpose(1, 2), dim=-1)
        f_c = self.norm2(self.a2(self.dropout(self_w) @ v))
        return CrossAttentionOutput(f_c, f_c.mean(1), cross, self_w)
