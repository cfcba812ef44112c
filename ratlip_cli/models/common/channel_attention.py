"""Channel attention: ECA (Wang et al., CVPR 2020) and SE (Hu et al., CVPR 2018), and a convolution
whose output channels they reweight (ECAGAN's "channel-attention convolution")."""

from __future__ import annotations

import math

import torch
from torch import nn

ATTENTION_KINDS = ("eca", "se", "none")


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA-Net's adaptive 1-D kernel size: the odd number nearest |(log2 C + b) / gamma| (rounded up)."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class ECA(nn.Module):
    """x * sigmoid(conv1d_k(GAP(x))): a k-wide 1-D convolution across channels, no bias, no reduction."""

    def __init__(self, channels: int, k_size: int | None = None) -> None:
        super().__init__()
        k = eca_kernel_size(channels) if k_size is None else k_size
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel attention weights (N, C) in (0, 1)."""
        return torch.sigmoid(self.conv(x.mean((2, 3)).unsqueeze(1)).squeeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)[:, :, None, None]


class SqueezeExcite(nn.Module):
    """x * sigmoid(W2 relu(W1 GAP(x))) with hidden width C // reduction (the SE paper's formula, no biases)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, channels, bias=False)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel attention weights (N, C) in (0, 1)."""
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)[:, :, None, None]


def channel_attention(kind: str, channels: int) -> nn.Module:
    """The channel-attention module named by `kind` (eca, se, none -> identity)."""
    if kind == "eca":
        return ECA(channels)
    if kind == "se":
        return SqueezeExcite(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"channel attention must be one of {', '.join(ATTENTION_KINDS)}, got {kind!r}")


class ChannelAttentionBlock(nn.Module):
    """A k x k convolution (no bias, 'same' padding) whose output channels are reweighted by channel attention.

    (Its name has no "Conv" in it on purpose: DM-GAN's `init_weights` picks modules by class name.)"""

    def __init__(self, in_channels: int, out_channels: int, attention: str = "eca", kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.attention = channel_attention(attention, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.conv(x))
