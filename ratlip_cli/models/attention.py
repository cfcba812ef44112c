"""Shuffle attention (SA-Net: Zhang & Yang, "SA-Net: Shuffle Attention for Deep CNNs", ICASSP 2021).

The channels are split into `groups` groups; each group is halved into a channel-attention branch
(global average pool -> per-channel scale and shift -> sigmoid gate) and a spatial-attention
branch (per-channel GroupNorm -> per-channel scale and shift -> sigmoid gate). The halves are
concatenated and the channels shuffled so information crosses groups. Every operation is per
sample, so the layer is batch independent (it has no running statistics).
"""

from __future__ import annotations

import torch
from torch import nn

from ratlip_cli.errors import RatlipError


class ShuffleAttention(nn.Module):
    """SA-Net shuffle attention over (B, C, H, W); C must be divisible by 2 * groups."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        if groups < 1 or channels % (2 * groups):
            raise RatlipError(
                f"shuffle attention with model.sa_groups={groups} needs a channel count divisible by "
                f"{2 * groups}, got {channels} channels; change model.sa_groups or the channel widths"
            )
        self.groups = groups
        half = channels // (2 * groups)
        # SA-Net's initialisation: zero weights and unit biases, so each gate starts at sigmoid(1).
        self.c_weight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.c_bias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.s_weight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.s_bias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.norm = nn.GroupNorm(half, half)

    @staticmethod
    def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.reshape(b * self.groups, c // self.groups, h, w)
        x_c, x_s = x.chunk(2, dim=1)
        gate_c = x_c.mean(dim=(2, 3), keepdim=True) * self.c_weight + self.c_bias
        x_c = x_c * torch.sigmoid(gate_c)
        gate_s = self.norm(x_s) * self.s_weight + self.s_bias
        x_s = x_s * torch.sigmoid(gate_s)
        out = torch.cat([x_c, x_s], dim=1).reshape(b, c, h, w)
        return self.channel_shuffle(out, 2)
