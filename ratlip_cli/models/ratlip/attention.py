"""Shuffle attention (SA-Net: Zhang & Yang, "SA-Net: Shuffle Attention for Deep CNNs", ICASSP 2021).

The channels are split into `groups` groups; each group is halved into a channel-attention branch
(global average pool -> per-channel scale and shift -> sigmoid gate) and a spatial-attention
branch (per-channel GroupNorm -> per-channel scale and shift -> sigmoid gate). The halves are
concatenated and the channels shuffled so information crosses groups. Every operation is per
sample, so the layer is batch independent (it has no running statistics).

Speed (same arithmetic up to float rounding): both branches are one gate ``x * sigmoid(...)`` over
all channels, computed from a single GroupNorm pass (see `_gate`), with no split or concatenation
copies; the channel shuffle is not materialised when a residual is added (``forward(x, residual)``
reads the gate and x through the shuffle as a strided view, `_ShuffledGateAdd`). Channels_last
tensors stay channels_last, gradients included.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ratlip_cli.errors import RatlipError


def _pairs(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C/2, 2, H, W) view: channel 2m + t at [m, t]."""
    return t.unflatten(1, (t.shape[1] // 2, 2))


def _halves(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C/2, 2, H, W) view: channel t * C/2 + m at [m, t] (channel_shuffle(., 2) order)."""
    return t.unflatten(1, (2, t.shape[1] // 2)).transpose(1, 2)


class _ShuffledGateAdd(torch.autograd.Function):
    """``residual + channel_shuffle(x * gate, 2)`` in one pass, and a backward that keeps the memory format.

    The shuffle is a strided view read by the fused multiply-add (no shuffled copy). Written as a
    Function because autograd's own backward of the view would return gradients in the default
    (NCHW) format and slow down every later channels_last operation.
    """

    @staticmethod
    def forward(ctx, residual: torch.Tensor, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, gate)
        out = torch.empty_like(residual)
        torch.addcmul(_pairs(residual), _halves(x), _halves(gate), out=_pairs(out))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, gate = ctx.saved_tensors
        g = _pairs(grad)
        grad_x = grad_gate = None
        if ctx.needs_input_grad[1]:
            grad_x = torch.empty_like(x)
            torch.mul(g, _halves(gate), out=_halves(grad_x))
        if ctx.needs_input_grad[2]:
            grad_gate = torch.empty_like(gate)
            torch.mul(g, _halves(x), out=_halves(grad_gate))
        return grad, grad_x, grad_gate


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
        # CUDA's group norm kernel takes only the default (NCHW) layout; the CPU one also channels_last.
        x_gn = x if x.device.type == "cpu" else x.contiguous()
        pre, mean, _ = torch.native_group_norm(
            x_gn, gn_weight.to(x.dtype), gn_bias.to(x.dtype), b, c, h * w, c, self.norm.eps
        )
        if torch.is_grad_enabled():
            # sum / n, not GroupNorm's mean: its gradient is a broadcast view instead of a full NCHW tensor.
            mean = x.sum(dim=(2, 3)) / (h * w)
        mean_c = mean.view(b, g, 2, half)[:, :, 0]
        pre_c = mean_c * self.c_weight.view(half) + self.c_bias.view(half)  # (B, G, half)
        shift = torch.stack([pre_c, torch.zeros_like(pre_c)], dim=2).view(b, c, 1, 1).to(pre.dtype)
        if torch.is_grad_enabled():
            return torch.sigmoid(pre + shift)
        return pre.add_(shift).sigmoid_()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """SA(x), or ``residual + SA(x)`` (same shape as x) with the shuffle folded into the addition."""
        gate = self._gate(x)
        if residual is None:
            return self.channel_shuffle(x * gate, 2)
        dtype = torch.promote_types(residual.dtype, torch.promote_types(x.dtype, gate.dtype))
        return _ShuffledGateAdd.apply(residual.to(dtype), x.to(dtype), gate.to(dtype))
