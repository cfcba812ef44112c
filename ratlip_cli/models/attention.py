"""Shuffle attention (SA-Net: Zhang & Yang, "SA-Net: Shuffle Attention for Deep CNNs", ICASSP 2021).

The channels are split into `groups` groups; each group is halved into a channel-attention branch
(global average pool -> per-channel scale and shift -> sigmoid gate) and a spatial-attention
branch (per-channel GroupNorm -> per-channel scale and shift -> sigmoid gate). The halves are
concatenated and the channels shuffled so information crosses groups. Every operation is per
sample, so the layer is batch independent (it has no running statistics).

Speed (same arithmetic up to float rounding): both branches are one gate ``x * sigmoid(...)`` over
all channels, computed from a single GroupNorm pass (see `_gate`), with no split or concatenation
copies; the channel shuffle is not materialised when a residual is added (``forward(x, residual)``
reads the gate and x through the shuffle as a strided view). Works on channels_last tensors.
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

    def _gate(self, x: torch.Tensor) -> torch.Tensor:
        """The sigmoid gate of every channel, (B, C, H, W), before the shuffle.

        Channel branch: sigmoid(mean(x) * c_w + c_b), one value per (sample, channel). Spatial branch:
        sigmoid((((x - mean) * rstd) * gn_w + gn_b) * s_w + s_b), with GroupNorm's per-(sample,
        channel) statistics. One `native_group_norm` pass over all channels gives both: its
        per-channel weight and bias are (gn_w * s_w, gn_b * s_w + s_b) on spatial channels and 0 on
        channel-branch channels, whose pre-activation (from the returned means) is added after.
        """
        b, c, h, w = x.shape
        g, half = self.groups, c // (2 * self.groups)
        s_w = self.s_weight.view(half)
        zeros = s_w.new_zeros(half)
        gn_weight = torch.stack([zeros, self.norm.weight * s_w]).repeat(g, 1).view(c)
        gn_bias = torch.stack([zeros, self.norm.bias * s_w + self.s_bias.view(half)]).repeat(g, 1).view(c)
        pre, mean, _ = torch.native_group_norm(
            x, gn_weight.to(x.dtype), gn_bias.to(x.dtype), b, c, h * w, c, self.norm.eps
        )
        mean_c = mean.view(b, g, 2, half)[:, :, 0]
        pre_c = mean_c * self.c_weight.view(half) + self.c_bias.view(half)  # (B, G, half)
        shift = torch.stack([pre_c, torch.zeros_like(pre_c)], dim=2).view(b, c, 1, 1).to(pre.dtype)
        if torch.is_grad_enabled():
            return torch.sigmoid(pre + shift)
        return pre.add_(shift).sigmoid_()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """SA(x), or ``residual + SA(x)`` (same shape as x) with the shuffle folded into the addition."""
        b, c, h, w = x.shape
        gate = self._gate(x)
        if residual is None:
            return self.channel_shuffle(x * gate, 2)
        # channel_shuffle(y, 2): output channel 2m + t is y's channel t * C/2 + m; read y through that view.
        shuffled = lambda t: t.unflatten(1, (2, c // 2)).transpose(1, 2)  # noqa: E731
        return torch.addcmul(residual.unflatten(1, (c // 2, 2)), shuffled(x), shuffled(gate)).flatten(1, 2)
