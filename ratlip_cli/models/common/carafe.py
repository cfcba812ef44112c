"""CARAFE, content-aware reassembly of features (Wang et al., ICCV 2019), in pure PyTorch.

mmcv's CARAFE needs compiled CUDA ops; this version uses `unfold` + softmax kernels and runs on any
device. Every output pixel is the kernel-weighted sum of the k_up x k_up neighbourhood of its source
pixel, with one normalised kernel per output pixel predicted from the input itself:
channel compressor (1x1) -> content encoder (k_enc x k_enc) -> pixel shuffle -> softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def carafe_reassemble(x: torch.Tensor, kernels: torch.Tensor, k_up: int, scale: int) -> torch.Tensor:
    """Reassemble `x` (N, C, H, W) with per-output-pixel kernels (N, k_up**2, sH, sW) -> (N, C, sH, sW).

    Output pixel (i, j) reads the k_up x k_up neighbourhood (zero padded) of source pixel
    (i // scale, j // scale); kernel index ky * k_up + kx weights the offset (ky - r, kx - r),
    r = k_up // 2. The upsampled patches are never materialised.
    """
    n, c, h, w = x.shape
    if kernels.shape != (n, k_up * k_up, h * scale, w * scale):
        raise ValueError(f"kernels must be {(n, k_up * k_up, h * scale, w * scale)}, got {tuple(kernels.shape)}")
    patches = F.unfold(x, k_up, padding=k_up // 2).view(n, c, k_up * k_up, h, w)
    kern = kernels.view(n, k_up * k_up, h, scale, w, scale)
    out = torch.einsum("nckhw,nkhawb->nchawb", patches, kern)
    return out.reshape(n, c, h * scale, w * scale)


class CARAFE(nn.Module):
    """Content-aware upsampling by `scale` (CARAFE; paper defaults k_up 5, k_enc 3, 64 compressed channels).

    One reassembly group (the paper's default). Initialisation follows mmcv's CARAFEPack: the
    compressor is Xavier-uniform, the content encoder N(0, 0.001), both biases zero, so a fresh
    module starts close to a uniform (box-filter) upsampler.
    """

    def __init__(self, channels: int, scale: int = 2, k_up: int = 5, k_enc: int = 3, compressed: int = 64) -> None:
        super().__init__()
        if k_up % 2 == 0 or k_enc % 2 == 0:
            raise ValueError(f"k_up and k_enc must be odd, got {k_up} and {k_enc}")
        self.scale = scale
        self.k_up = k_up
        self.compressor = nn.Conv2d(channels, compressed, 1)
        self.encoder = nn.Conv2d(compressed, scale * scale * k_up * k_up, k_enc, padding=k_enc // 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmcv's CARAFEPack initialisation: compressor Xavier-uniform, encoder N(0, 0.001), zero biases."""
        nn.init.xavier_uniform_(self.compressor.weight)
        nn.init.zeros_(self.compressor.bias)
        nn.init.normal_(self.encoder.weight, std=0.001)
        nn.init.zeros_(self.encoder.bias)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised reassembly kernels (N, k_up**2, sH, sW) predicted from `x`."""
        mask = F.pixel_shuffle(self.encoder(self.compressor(x)), self.scale)
        return torch.softmax(mask, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return carafe_reassemble(x, self.kernels(x), self.k_up, self.scale)
