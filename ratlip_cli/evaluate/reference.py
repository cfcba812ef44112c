"""The test split and its reference statistics (cached on disk, keyed by everything that changes them)."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress

from ratlip_cli import __version__, dist
from ratlip_cli.console import warn
from ratlip_cli.data.split import DatasetSplit, read_split
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import atomic_write, utc_timestamp
from ratlip_cli.metrics.features import FeatureExtractor
from ratlip_cli.metrics.fid import GaussianStats, feature_stats, psd_sqrt
from ratlip_cli.evaluate.options import (
    CACHE_VERSION,
    batch_starts,
)


# ----------------------------------------------------------------------------- the test split

# The evaluation's reference split is a `DatasetSplit` (ratlip_cli/data/split.py), read the same way
# from the folder format and from tar shards.
ReferenceSplit = DatasetSplit


def load_test_split(root: str | Path, split: str = "test", shard_url: str = "") -> ReferenceSplit:
    """Read `split` of the dataset (prepared or tar shards) at `root`: images, captions, a content fingerprint."""
    return read_split(Path(root).expanduser(), split, shard_url)


def plan_captions(split: ReferenceSplit, passes: int, num: int, seed: int) -> list[str]:
    """The captions to generate from, in order (paper protocol: `passes` passes over the split).

    Each pass visits every image that has captions once, in a seeded random order, and takes one of
    its captions: image i's captions are used in a seeded random permutation, cycling, so 12 passes
    over 10 captions use every caption at least once. `num` > 0 takes the first `num` entries of
    as many passes as that needs (a seeded random subset of the split when num < its size).
    """
    rng = np.random.default_rng(seed)
    usable = [i for i, caps in enumerate(split.captions) if caps]
    perms = {i: rng.permutation(len(split.captions[i])) for i in usable}
    total_passes = math.ceil(num / len(usable)) if num > 0 else passes
    plan: list[str] = []
    for p in range(total_passes):
        for i in rng.permutation(usable):
            caps = split.captions[i]
            plan.append(caps[perms[i][p % len(caps)]])
    return plan[:num] if num > 0 else plan


# ----------------------------------------------------------------------------- reference statistics


@dataclass
class ReferenceStats:
    """Reference-split features for FID (mean/covariance) and KID (the features themselves)."""

    stats: GaussianStats
    features: np.ndarray
    path: Path
    meta: dict
    sigma_sqrt: np.ndarray | None = None


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/ratlip/fid-stats`, else `~/.cache/ratlip/fid-stats`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ratlip" / "fid-stats"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "dataset"


def reference_cache_path(
    split: ReferenceSplit, size: int, extractor: FeatureExtractor, cache_dir: str | Path = ""
) -> Path:
    """Cache file of the reference statistics: the name encodes dataset (name + content fingerprint),
    split, reference image size, fid mode and the exact feature network."""
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    dataset = f"{_slug(split.root.resolve().name)}-{split.fingerprint[:10]}"
    name = f"{dataset}-{split.split}-{size}px-{extractor.mode}-{extractor.key}.npz"
    return folder / name


def load_reference_image(path: Path, size: int) -> np.ndarray:
    """A reference image as the generator would draw it: RGB, centre square crop, PIL bicubic to
    `size` x `size`, uint8."""
    try:
        with Image.open(path.open() if hasattr(path, "offset") else path) as im:  # a file, or a TarMember
            img = im.convert("RGB")
    except OSError as exc:
        raise RatlipError(f"cannot read reference image {path}: {exc}") from None
    w, h = img.size
    side = min(w, h)
    if (w, h) != (side, side):
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def _load_reference_cache(path: Path, split: ReferenceSplit, extractor: FeatureExtractor) -> ReferenceStats | None:
    """The cached reference statistics, or None (with a warning when the file is there but unusable)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            feats = data["features"]
            stats = GaussianStats(data["mu"], data["sigma"], int(feats.shape[0]))
            meta = json.loads(str(data["meta"]))
            root = data["sigma_sqrt"]
        if feats.shape == (len(split.keys), extractor.dim):
            return ReferenceStats(stats, feats, path, meta, root)
        warn(f"reference cache {path} does not match the dataset; recomputing")
    except (OSError, ValueError, KeyError) as exc:
        warn(f"unreadable reference cache {path} ({exc}); recomputing")
    return None


def reference_statistics(
    split: ReferenceSplit,
    size: int,
    extractor: FeatureExtractor,
    cache_dir: str | Path = "",
    batch_size: int = 64,
    bars: Progress | None = None,
) -> ReferenceStats | None:
    """Features of the split's images (centre-cropped, resized to `size`), from the cache when there.

    Under torchrun every process extracts its share; rank 0 gets the result (others None)."""
    path = reference_cache_path(split, size, extractor, cache_dir)
    cached = _load_reference_cache(path, split, extractor) if dist.is_main() else None
    # Under torchrun rank 0 decides, so that every process takes the same branch.
    if dist.broadcast_object(cached is not None):
        return cached
    starts = batch_starts(len(split.paths), batch_size)
    mine = sum(len(split.paths[s : s + batch_size]) for s in starts)
    chunks = []
    task = bars.add_task(f"reference features ({split.split})", total=mine) if bars else None
    for start in starts:
        images = [load_reference_image(p, size) for p in split.paths[start : start + batch_size]]
        chunks.append((start, extractor(images)))
        if bars is not None:
            bars.advance(task, len(images))
    gathered = sorted((c for part in dist.all_gather_object(chunks) for c in part), key=lambda c: c[0])
    if not dist.is_main():
        return None
    feats = np.concatenate([f for _, f in gathered]).astype(np.float32)
    stats = feature_stats(feats)
    meta = {
        "version": CACHE_VERSION,
        "dataset": str(split.root.resolve()),
        "fingerprint": split.fingerprint,
        "split": split.split,
        "num_images": len(split.keys),
        "size": size,
        "mode": extractor.mode,
        "feature_extractor": extractor.identity,
        "created": utc_timestamp(),
        "ratlip": __version__,
    }
    root = psd_sqrt(stats.sigma)  # FID's costly eigendecomposition, done once per reference
    arrays = dict(mu=stats.mu, sigma=stats.sigma, sigma_sqrt=root, features=feats, meta=np.array(json.dumps(meta)))
    atomic_write(path, lambda fh: np.savez(fh, **arrays))
    return ReferenceStats(stats, feats, path, meta, root)
