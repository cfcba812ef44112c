"""The test split and its reference statistics (cached on disk, keyed by everything that changes them)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.progress import Progress

from ratlip_cli import __version__, dist
from ratlip_cli.console import warn
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import atomic_write, utc_timestamp
from ratlip_cli.metrics.features import FeatureExtractor
from ratlip_cli.metrics.fid import GaussianStats, feature_stats, psd_sqrt
from ratlip_cli.evaluate.options import (
    CACHE_VERSION,
    batch_starts,
)


# ----------------------------------------------------------------------------- the test split


@dataclass
class ReferenceSplit:
    """The reference split of a prepared dataset: images (sorted by key) and all their captions."""

    root: Path
    split: str
    keys: list[str]
    paths: list[Any]  # Path per image; for tar shards a TarMember (a byte range of a shard)
    captions: list[list[str]]
    fingerprint: str
    _pool: tuple[list[str], dict[str, frozenset[int]]] | None = field(default=None, repr=False)

    def pool(self) -> tuple[list[str], dict[str, frozenset[int]]]:
        """(sorted unique captions, text -> pool indices of every caption of every image having that text).

        R-precision draws its wrong captions from this pool, excluding the true caption and the other
        captions of the same image(s), so a correct description never counts as a wrong one.
        """
        if self._pool is None:
            texts = sorted({t for caps in self.captions for t in caps})
            index = {t: i for i, t in enumerate(texts)}
            excluded: dict[str, set[int]] = {}
            for caps in self.captions:
                ids = {index[t] for t in caps}
                for t in caps:
                    excluded.setdefault(t, set()).update(ids)
            self._pool = (texts, {t: frozenset(v) for t, v in excluded.items()})
        return self._pool


def _load_prepared(root: Path):
    try:
        from ratlip_cli.data import load_prepared
    except ImportError:
        raise RatlipError("this install lacks ratlip_cli.data.load_prepared (cannot read prepared datasets)") from None
    return load_prepared(root)


def _shard_split(ds, root: Path, split: str) -> ReferenceSplit:
    """`load_test_split` for tar shards: images are byte ranges of the shards, in key order; the
    fingerprint is computed as for the prepared format (equal images give equal fingerprints)."""
    if split not in ds.splits:
        raise RatlipError(f"dataset {root} has no '{split}' images (splits present: {', '.join(ds.splits) or 'none'})")
    rows = sorted(ds.index_split(split), key=lambda r: r[0])
    digest = hashlib.sha1(f"{split}\n".encode())
    for key, caps, member in rows:
        digest.update(f"{key}\t{member.size}\t{len(caps)}\n".encode())
    if not any(caps for _, caps, _ in rows):
        raise RatlipError(f"the '{split}' split of {root} has no captions")
    return ReferenceSplit(root, split, [r[0] for r in rows], [r[2] for r in rows], [r[1] for r in rows],
                          digest.hexdigest())


def load_test_split(root: str | Path, split: str = "test", shard_url: str = "") -> ReferenceSplit:
    """Read `split` of the dataset (prepared or tar shards) at `root`: images, captions, a content fingerprint."""
    from ratlip_cli.data.shards import is_shard_dataset, load_shards

    root = Path(root).expanduser()
    if is_shard_dataset(root):
        return _shard_split(load_shards(root, shard_url), root, split)
    ds = _load_prepared(root)
    images = ds.images
    rows = images[images["split"] == split]
    if rows.empty:
        present = ", ".join(sorted(map(str, images["split"].unique()))) or "none"
        raise RatlipError(f"dataset {root} has no '{split}' images (splits present: {present})")
    rows = rows.sort_values("key")
    caps = ds.captions.sort_values(["key", "caption_idx"])
    by_key = {str(k): [str(t) for t in g["text"]] for k, g in caps.groupby("key", sort=False)}
    base = Path(getattr(ds, "root", root))
    keys, paths, captions = [], [], []
    digest = hashlib.sha1(f"{split}\n".encode())
    for key, path in zip(rows["key"].astype(str), rows["path"].astype(str)):
        full = Path(path) if Path(path).is_absolute() else base / path
        try:
            size = full.stat().st_size
        except OSError:
            raise RatlipError(
                f"image of '{key}' missing from the prepared dataset: {full} (re-run `ratlip prepare`)"
            ) from None
        keys.append(key)
        paths.append(full)
        captions.append(by_key.get(key, []))
        digest.update(f"{key}\t{size}\t{len(by_key.get(key, []))}\n".encode())
    if not any(captions):
        raise RatlipError(f"the '{split}' split of {root} has no captions")
    return ReferenceSplit(root, split, keys, paths, captions, digest.hexdigest())


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
