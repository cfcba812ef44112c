"""The two evaluation protocols of `ratlip eval` and what differs between them: metric selection,
the authors' reference statistics file, the galip caption plan and noise, and the galip reference
features of the split's images (DF-GAN's `code/eval/FID/fid_score.py` transform).

- `clean-fid` (default): uint8 images, clean-fid's resize and Inception, statistics of the split's
  images (docs/evaluation.md, "The protocol").
- `galip`: tobran/GALIP `calculate_FID_CLIP_sim` (`code/lib/modules.py`) as `code/src/test.py` runs it
  (docs/evaluation.md, "The authors' protocol").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from ratlip_cli import __version__, dist
from ratlip_cli.console import warn
from ratlip_cli.errors import RatlipError
from ratlip_cli.evaluate.options import (  # noqa: F401  (the metric names are re-exported)
    CACHE_VERSION, DEFAULT_METRICS, METRIC_HELP, METRICS, PROTOCOLS, batch_starts, parse_metrics,
)
from ratlip_cli.evaluate.reference import (
    ReferenceSplit,
    ReferenceStats,
    _slug,
    default_cache_dir,
)
from ratlip_cli.files import atomic_write, utc_timestamp
from ratlip_cli.metrics.fid import GaussianStats, feature_stats, psd_sqrt
from ratlip_cli.metrics.galip_fid import FID_SIZE, GalipFeatures

def load_ref_stats(path: str | Path, dim: int) -> GaussianStats:
    """`mu` (dim,) and `sigma` (dim, dim) from an .npz such as the authors' bird_val256_FIDK0.npz."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise RatlipError(f"--ref-stats file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("mu", "sigma") if k not in data.files]
            if missing:
                raise RatlipError(
                    f"--ref-stats {path.name} has no {' or '.join(missing)} (keys: {', '.join(data.files) or 'none'}); "
                    "it needs mu and sigma, as the authors' bird_val256_FIDK0.npz has"
                )
            mu, sigma = np.asarray(data["mu"], dtype=np.float64), np.asarray(data["sigma"], dtype=np.float64)
    except (OSError, ValueError, EOFError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise RatlipError(f"--ref-stats {path} is not a readable .npz: {reason}") from None
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise RatlipError(
            f"--ref-stats {path.name}: mu {mu.shape} and sigma {sigma.shape} do not fit the {dim}-d features "
            f"(need mu ({dim},) and sigma ({dim}, {dim}))"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise RatlipError(f"--ref-stats {path.name}: mu or sigma contains NaN or inf")
    return GaussianStats(mu, sigma, 0)


def plan_captions_galip(split: ReferenceSplit, passes: int, num: int, batch_size: int, seed: int) -> list[str]:
    """The release's test loader, `passes` times: the images in one seeded random order (the
    DistributedSampler of `scripts/test.sh`, never `set_epoch`-ed, gives every pass the same order),
    the last incomplete batch dropped (`drop_last=True`), one caption per image drawn uniformly at
    random each time (`get_caption`). `num` > 0 keeps the first `num` of as many passes as needed."""
    rng = np.random.default_rng(seed)
    usable = [i for i, caps in enumerate(split.captions) if caps]
    kept = len(usable) // batch_size * batch_size
    if kept == 0:
        raise RatlipError(
            f"the galip protocol drops the last incomplete batch, and the split has only {len(usable)} images "
            f"with captions for batches of {batch_size}: lower --batch-size"
        )
    order = [usable[j] for j in rng.permutation(len(usable))[:kept]]
    total = -(-num // kept) if num > 0 else passes
    plan = [split.captions[i][int(rng.integers(len(split.captions[i])))] for _ in range(total) for i in order]
    return plan[:num] if num > 0 else plan


def galip_noise(sizes: list[int], z_dim: int, seed: int) -> list[torch.Tensor]:
    """One `torch.randn(B, z_dim)` per batch, in order, after seeding with `seed` (the release:
    `torch.manual_seed(100)`, then `torch.randn` in every batch); every process draws all of them."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, z_dim, generator=gen) for n in sizes]


# ----------------------------------------------------------------------------- reference features


def load_galip_reference_image(path, seed: int) -> torch.Tensor:
    """A split image as DF-GAN's `fid_score.py` reads a folder: RGB, `Resize(299)` (PIL bilinear, shorter
    side), `RandomCrop(299)` (seeded per image), `ToTensor` -> (3, 299, 299) in [0, 1]."""
    from PIL import Image
    from torchvision import transforms

    try:
        with Image.open(path.open() if hasattr(path, "offset") else path) as im:
            img = im.convert("RGB")
    except OSError as exc:
        raise RatlipError(f"cannot read reference image {path}: {exc}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tf = transforms.Compose([transforms.Resize(FID_SIZE), transforms.RandomCrop(FID_SIZE),
                                 transforms.Resize((FID_SIZE, FID_SIZE)), transforms.ToTensor()])
        return tf(img)


def galip_reference_path(split: ReferenceSplit, extractor: GalipFeatures, batch_size: int, cache_dir: str | Path) -> Path:
    """Cache file of the galip reference features (dataset, split, the drop_last batch size, network)."""
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    dataset = f"{_slug(split.root.resolve().name)}-{split.fingerprint[:10]}"
    return folder / f"{dataset}-{split.split}-galip-b{batch_size}-{extractor.key}.npz"


def galip_reference(
    split: ReferenceSplit,
    extractor: GalipFeatures,
    cache_dir: str | Path = "",
    batch_size: int = 64,
    seed: int = 0,
    bars: Progress | None = None,
) -> ReferenceStats | None:
    """Features of the split's images read the DF-GAN way (`load_galip_reference_image`), in split order,
    the last incomplete batch dropped as that script's `drop_last=True` loader does; cached.
    Under torchrun every process extracts its share; rank 0 gets the result (others None)."""
    path = galip_reference_path(split, extractor, batch_size, cache_dir)
    cached = None
    if dist.is_main() and path.is_file():
        try:
            with np.load(path) as data:
                feats, meta = data["features"], json.loads(str(data["meta"]))
                cached = ReferenceStats(GaussianStats(data["mu"], data["sigma"], feats.shape[0]), feats, path, meta,
                                        data["sigma_sqrt"])
        except (OSError, ValueError, KeyError) as exc:
            warn(f"unreadable reference cache {path} ({exc}); recomputing")
    if dist.broadcast_object(cached is not None):
        return cached
    kept = len(split.paths) // batch_size * batch_size
    if kept < 2:
        raise RatlipError(f"the galip reference drops the last incomplete batch: {len(split.paths)} images in batches "
                          f"of {batch_size} leave {kept}; lower --batch-size")
    starts = batch_starts(kept, batch_size)
    task = bars.add_task(f"reference features ({split.split}, galip)", total=len(starts) * batch_size) if bars else None
    chunks = []
    for start in starts:
        batch = torch.stack([load_galip_reference_image(split.paths[i], seed + i) for i in range(start, start + batch_size)])
        chunks.append((start, extractor.from_unit(batch)))
        if bars is not None:
            bars.advance(task, batch_size)
    gathered = sorted((c for part in dist.all_gather_object(chunks) for c in part), key=lambda c: c[0])
    if not dist.is_main():
        return None
    feats = np.concatenate([f for _, f in gathered]).astype(np.float32)
    stats = feature_stats(feats)
    meta = {"version": CACHE_VERSION, "dataset": str(split.root.resolve()), "fingerprint": split.fingerprint,
            "split": split.split, "num_images": int(feats.shape[0]), "size": FID_SIZE, "mode": "galip",
            "feature_extractor": extractor.identity, "created": utc_timestamp(), "ratlip": __version__}
    root = psd_sqrt(stats.sigma)
    arrays = {"mu": stats.mu, "sigma": stats.sigma, "sigma_sqrt": root, "features": feats,
              "meta": np.array(json.dumps(meta))}
    atomic_write(path, lambda fh: np.savez(fh, **arrays))
    return ReferenceStats(stats, feats, path, meta, root)
