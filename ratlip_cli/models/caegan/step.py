"""CAE-GAN's optimisation step: DM-GAN's, with the generator reading the real image's DAMSM region
features through the cross-attention encoder, plus the query prior's distillation loss
(`caegan.prior_weight`, logged as g_prior; 0 with `caegan.cross_attention=false`).

Region features: the run's frozen DAMSM image encoder on the batch's real images at the last
stage's size, (B, nef, h, w) -> (B, h*w, nef), no gradient.
"""

from __future__ import annotations

from typing import Any

import torch

from ratlip_cli.models.dmgan.losses import kl_mean_only
from ratlip_cli.models.dmgan.step import DmganStep


class CaeganStep(DmganStep):
    """DM-GAN's step with CAE-GAN's image-side input and the query prior's loss."""

    loss_columns = (*DmganStep.loss_columns, "g_prior")
    _regions: torch.Tensor | None = None

    def image_regions(self, real: torch.Tensor) -> torch.Tensor:
        """(B, h*w, nef) region features of the real images under the frozen DAMSM image encoder."""
        with torch.no_grad():
            region, _code = self.encoders.image(real)
        return region.float().flatten(2).transpose(1, 2)

    def generator_forward(self, z, sentence, words, mask, eps, real):
        self._regions = self.image_regions(real) if self.cfg.caegan.cross_attention else None
        return self.G(z, sentence, words, mask, eps=eps, image_regions=self._regions)

    def extra_generator_losses(self, fakes, reals, sentence, words, mask) -> list[torch.Tensor]:
        if self._regions is None:
            return [torch.zeros((), device=self.device)]
        return [self.cfg.caegan.prior_weight * self.G.prior_loss(sentence, words, mask, self._regions)]

    def ca_loss(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """`dmgan.loss_formulas: paper`: CAE-GAN's L_CA = KL(N(mu(s)) || N(0, I)) as written (no variance term)."""
        if self.cfg.dmgan.loss_formulas == "paper":
            return kl_mean_only(mu)
        return super().ca_loss(mu, logvar)

    def describe(self, row: dict[str, Any]) -> str:
        return f"{super().describe(row)} prior {row['g_prior']:.4f}"
