"""ECAGAN as a model family: DM-GAN's family with ECAGAN's generator and step (everything else shared)."""

from __future__ import annotations

import torch
from torch import nn

from ratlip_cli.config import Config
from ratlip_cli.models.dmgan.family import DmganFamily
from ratlip_cli.models.family import Networks, TrainingStep


class EcaganFamily(DmganFamily):
    """ECAGAN (Zhang, Yi, Tang, Wang, Computer Engineering 48(4), 2022) on the DM-GAN family."""

    name = "ecagan"
    summary = "ECAGAN: DM-GAN with CARAFE upsampling, channel attention and a perceptual loss (Zhang et al., 2022)"

    def make_generator(self, cfg: Config, nef: int, base_size: int) -> nn.Module:
        from ratlip_cli.models.ecagan.build import ecagan_generator

        return ecagan_generator(cfg, nef, base_size)

    def make_step(self, cfg: Config, nets: Networks, device: torch.device, noise: torch.Generator) -> TrainingStep:
        from ratlip_cli.models.ecagan.step import EcaganStep

        return EcaganStep(cfg, nets, device, noise)


FAMILY = EcaganFamily()
