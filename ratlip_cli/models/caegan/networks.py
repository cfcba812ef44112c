"""CAE-GAN's generator (Tan et al., Computer Science 49(2), 2022): DM-GAN conditioned on the output of a
cross-attention encoder that aligns the words with image features.

    f_c = CE(words, image regions).vector     (cross-attention, then self-attention; models/common)
    c, mu, logvar = CA(f_c); F0 = G0(c, z); F1 = G1(DM(F0, W)); F2 = G2(DM(F1, W)),  W = the words

Text-only generation (the paper's encoder reads a real image, which sampling does not have): a
`QueryPrior` predicts region features from the sentence. During training the generator runs on the
real image's regions as in the paper, and `CaeganGenerator.prior_loss` teaches the prior to make the
encoder give the same f_c from its regions as from the real ones (the encoder's weights are frozen
for that term); at sampling (`image_regions=None`) the encoder reads the prior's regions. `cross_attention=False`
gives DM-GAN's generator exactly (the sentence vector feeds CA). See docs/architecture.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ratlip_cli.models.common.cross_attention import CrossAttentionEncoder
from ratlip_cli.models.dmgan.networks import DmganGenerator


class QueryPrior(nn.Module):
    """Sentence (B, t_dim) -> predicted image-region features (B, regions, dim): a learned per-region
    embedding plus a per-region linear map of the sentence."""

    def __init__(self, t_dim: int, regions: int, dim: int) -> None:
        super().__init__()
        self.regions, self.dim = regions, dim
        self.position = nn.Parameter(torch.zeros(regions, dim))
        self.proj = nn.Linear(t_dim, regions * dim)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, sentence: torch.Tensor) -> torch.Tensor:
        return self.position + self.proj(sentence).view(-1, self.regions, self.dim)


class CaeganGenerator(DmganGenerator):
    """DM-GAN's generator whose condition is the cross-attention encoder's f_c (when `cross_attention`).

    ``forward(z, sentence, words, mask, eps=None, image_regions=None)``: ``image_regions``
    (B, regions, region_dim) are the real image's features; None (sampling) uses the query prior.
    """

    def __init__(self, ngf: int = 64, nef: int = 256, ncf: int = 100, z_dim: int = 100, branch_num: int = 3,
                 base_size: int = 64, r_num: int = 2, mask_layout: str = "correct", cross_attention: bool = True,
                 prior_regions: int = 16, region_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__(ngf, nef, ncf, z_dim, branch_num, base_size, r_num, mask_layout)
        self.cross_attention = cross_attention
        if cross_attention:
            self.encoder = CrossAttentionEncoder(word_dim=nef, query_dim=region_dim, dim=nef, dropout=dropout)
            self.query_prior = QueryPrior(nef, prior_regions, region_dim)

    def condition(self, sentence: torch.Tensor, words: torch.Tensor, mask: torch.Tensor | None,
                  image_regions: torch.Tensor | None = None) -> torch.Tensor:
        """The vector CA reads: f_c from the encoder (real regions, or the prior's), or the sentence."""
        if not self.cross_attention:
            return sentence
        queries = self.query_prior(sentence) if image_regions is None else image_regions
        return self.encoder(words.transpose(1, 2), queries, mask).vector

    def prior_loss(self, sentence: torch.Tensor, words: torch.Tensor, mask: torch.Tensor | None,
                   image_regions: torch.Tensor) -> torch.Tensor:
        """MSE between f_c read from the prior's regions and f_c read from the real regions (the target,
        detached); gradients reach the prior only (the encoder runs with detached weights here)."""
        w = words.transpose(1, 2)
        with torch.no_grad():
            target = self.encoder(w, image_regions, mask).vector
        frozen = {name: p.detach() for name, p in self.encoder.named_parameters()}
        predicted = functional_call(self.encoder, frozen, (w, self.query_prior(sentence), mask)).vector
        return F.mse_loss(predicted, target)

    def forward(self, z: torch.Tensor, sentence: torch.Tensor, words: torch.Tensor, mask: torch.Tensor | None,
                eps: torch.Tensor | None = None, image_regions: torch.Tensor | None = None):
        return super().forward(z, self.condition(sentence, words, mask, image_regions), words, mask, eps)
