"""ECAGAN's generator (Zhang et al., Computer Engineering 48(4), 2022): DM-GAN whose stage-0 upsampling
blocks are content-aware (CARAFE) and followed by channel attention.

Stage-0 block ("CAUPBlock"): [CARAFE x2 | nearest x2] -> conv3x3 (2C) -> BN -> GLU -> [ECA | SE | -].
With `carafe=False, attention="none"` every block is DM-GAN's `upBlock` (same layers, same state-dict
keys), so the switches change exactly the modules they name. Stages 1 and 2 are DM-GAN's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ratlip_cli.models.common.carafe import CARAFE
from ratlip_cli.models.common.channel_attention import ChannelAttentionBlock, channel_attention
from ratlip_cli.models.dmgan.networks import GLU, DmganGenerator, GetImageG, InitStageG, conv3x3


@dataclass(frozen=True)
class CarafeSettings:
    """CARAFE's kernel sizes and compressed width (the CARAFE paper's defaults: 5, 3, 64)."""

    k_up: int = 5
    k_enc: int = 3
    compressed: int = 64


def caup_block(in_planes: int, out_planes: int, carafe: CarafeSettings | None, attention: str) -> nn.Sequential:
    """One stage-0 upsampling block; `carafe=None` upsamples nearest, `attention="none"` adds no attention."""
    up: nn.Module = (
        CARAFE(in_planes, 2, carafe.k_up, carafe.k_enc, carafe.compressed)
        if carafe is not None
        else nn.Upsample(scale_factor=2, mode="nearest")
    )
    layers = [up, conv3x3(in_planes, out_planes * 2), nn.BatchNorm2d(out_planes * 2), GLU()]
    if attention != "none":
        layers.append(channel_attention(attention, out_planes))
    return nn.Sequential(*layers)


class EcaganInitStage(InitStageG):
    """DM-GAN's stage 0 with CAUP blocks in place of its upsampling blocks."""

    def __init__(self, ngf: int, z_dim: int, ncf: int, base_size: int, carafe: CarafeSettings | None,
                 attention: str) -> None:
        super().__init__(ngf, z_dim, ncf, base_size)
        gf = self.gf_dim
        for k in range(1, self.steps + 1):
            setattr(self, f"upsample{k}", caup_block(gf // 2 ** (k - 1), gf // 2**k, carafe, attention))


class AttentiveImageHead(nn.Module):
    """The seed's other reading of ECAGAN ("after convolution with channel attention the image is
    generated"): a channel-attention convolution (`ChannelAttentionBlock`, ngf -> ngf) before DM-GAN's
    `GET_IMAGE_G` (conv3x3 to RGB, tanh)."""

    def __init__(self, ngf: int, attention: str) -> None:
        super().__init__()
        self.attend = ChannelAttentionBlock(ngf, ngf, attention=attention)
        self.img = GetImageG(ngf).img

    def forward(self, h_code: torch.Tensor) -> torch.Tensor:
        return self.img(self.attend(h_code))


class EcaganGenerator(DmganGenerator):
    """DM-GAN's generator (same forward) with ECAGAN's stage 0 (and, with ``head_attention``, attentive image heads)."""

    def __init__(self, ngf: int = 64, nef: int = 256, ncf: int = 100, z_dim: int = 100, branch_num: int = 3,
                 base_size: int = 64, r_num: int = 2, mask_layout: str = "correct",
                 carafe: CarafeSettings | None = CarafeSettings(), attention: str = "eca",
                 head_attention: str = "none") -> None:
        super().__init__(ngf, nef, ncf, z_dim, branch_num, base_size, r_num, mask_layout)
        self.h_net1 = EcaganInitStage(ngf, z_dim, ncf, base_size, carafe, attention)
        if head_attention != "none":
            for k in range(1, branch_num + 1):
                setattr(self, f"img_net{k}", AttentiveImageHead(ngf, head_attention))

    def reset_after_init(self) -> None:
        """Give every CARAFE block its own initialisation again (call after DM-GAN's `init_weights`)."""
        for module in self.modules():
            if isinstance(module, CARAFE):
                module.reset_parameters()
