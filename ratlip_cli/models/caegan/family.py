"""CAE-GAN as a model family: DM-GAN's family with CAE-GAN's generator and step (everything else shared)."""

from __future__ import annotations

import torch
from torch import nn

from ratlip_cli.config import Config
from ratlip_cli.models.dmgan.family import DmganFamily
from ratlip_cli.models.family import Networks, TrainingStep


class CaeganFamily(DmganFamily):
    """CAE-GAN (Tan, He, Wang, Luo, Qing, Computer Science 49(2), 2022) on the DM-GAN family."""

    name = "caegan"
    summary = "CAE-GAN: DM-GAN conditioned by a cross-attention encoder of words and image regions (Tan et al., 2022)"

    def make_generator(self, cfg: Config, nef: int, base_size: int) -> nn.Module:
        from ratlip_cli.models.caegan.build import caegan_generator

        return caegan_generator(cfg, nef, base_size)

    def make_step(self, cfg: Config, nets: Networks, device: torch.device, noise: torch.Generator) -> TrainingStep:
        from ratlip_cli.models.caegan.step import CaeganStep

        return CaeganStep(cfg, nets, device, noise)


FAMILY = CaeganFamily()
