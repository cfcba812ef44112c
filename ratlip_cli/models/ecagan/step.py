"""ECAGAN's optimisation step: DM-GAN's, plus lambda1 * sum_i L_per(fake_i, real_i) in the generator loss.

lambda1 is `ecagan.perceptual_weight`; lambda2 and lambda3 are DM-GAN's `dmgan.kl_weight` and
`dmgan.damsm_weight`. The term is logged as g_per (0 with `ecagan.perceptual=false`, so runs of the
family share their metrics.csv columns).
"""

from __future__ import annotations

from typing import Any

import torch

from ratlip_cli import dist
from ratlip_cli.config import Config
from ratlip_cli.console import console
from ratlip_cli.models.dmgan.step import DmganStep
from ratlip_cli.models.family import Networks


def perceptual_reduction(ecfg) -> str:
    """How the stages' perceptual terms combine: `ecagan.perceptual_reduction`, where auto is ControlGAN's
    code (mean over the stages) with VGG-16 and the seed's sum over stages with the Inception substitute."""
    if ecfg.perceptual_reduction != "auto":
        return ecfg.perceptual_reduction
    return "mean" if ecfg.perceptual_network == "vgg16" else "sum"


class EcaganStep(DmganStep):
    """DM-GAN's step with ECAGAN's perceptual loss at every stage."""

    loss_columns = (*DmganStep.loss_columns, "g_per")

    def __init__(self, cfg: Config, nets: Networks, device: torch.device, noise: torch.Generator) -> None:
        super().__init__(cfg, nets, device, noise)
        self.perceptual = None
        if cfg.ecagan.perceptual:
            from ratlip_cli.models.ecagan.perceptual_network import build_perceptual_loss

            self.perceptual = build_perceptual_loss(cfg.ecagan).to(device)
            if dist.is_main():
                console.print(f"perceptual loss on {self.perceptual.label}", highlight=False, soft_wrap=True)

    def extra_generator_losses(self, fakes, reals, sentence, words, mask) -> list[torch.Tensor]:
        if self.perceptual is None:
            return [torch.zeros((), device=self.device)]
        per = sum(self.perceptual(f, r) for f, r in zip(fakes, reals))
        if perceptual_reduction(self.cfg.ecagan) == "mean":
            per = per / len(fakes)
        return [self.cfg.ecagan.perceptual_weight * per]

    def describe(self, row: dict[str, Any]) -> str:
        return f"{super().describe(row)} per {row['g_per']:.3f}"
