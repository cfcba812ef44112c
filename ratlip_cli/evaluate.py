"""`ratlip eval`: FID, KID, CLIP score and CLIP R-precision for a run or for any folder of images.

Under torchrun (`torchrun --nproc_per_node=N -m ratlip_cli eval ...`) the batches (generation, reading,
feature extraction, CLIP embeddings; reference features too) are dealt round robin to the processes,
gathered in their original order, and scored once on rank 0: every batch holds the same images as in
one process, so the numbers are the same.

Both modes feed the same scoring path with batches of uint8 RGB images and their captions:
- run mode generates them in memory from the test split's captions with the run's exported EMA
  or raw generator (`eval.generator`, `--generator`; the row's `generator` column says which)
  (`ratlip_cli.export.load_generator`), optionally saving them (`save_images`);
- folder mode reads them from disk with a captions CSV (`file,caption`).
Reference statistics of the test split are cached on disk, keyed by everything that changes them.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ratlip_cli import __version__, dist
from ratlip_cli.dist import resolve_device
from ratlip_cli.config import Config, EvalConfig, load_config, set_value, validate
from ratlip_cli.console import console, err_console, warn
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import atomic_write, write_text
from ratlip_cli.metrics.clip_score import (
    RANDOM_CLIP_NOTE,
    ClipScorer,
    clip_metrics_note,
    clip_score,
    load_eval_clip,
    r_precision,
    sample_negatives,
)
from ratlip_cli.metrics.features import FeatureExtractor, build_feature_extractor
from ratlip_cli.metrics.fid import GaussianStats, feature_stats, fid_from_stats, kernel_distance, psd_sqrt

NOT_FID_MARK = "random-tiny (NOT FID)"
CACHE_VERSION = 1
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}


# ----------------------------------------------------------------------------- options and setup


@dataclass
class EvalOptions:
    """What one evaluation was asked for beyond the config's `eval` section."""

    dataset: str | None = None
    split: str = "test"
    device: str | None = None
    seed: int = 0
    # Side of the square reference images; 0: the size of the evaluated images.
    ref_size: int = 0
    save_images: Path | None = None
    out_csv: Path | None = None
    progress: bool = True


@dataclass
class ImageBatch:
    """uint8 RGB images (H, W, 3) and the caption each was made from."""

    images: list[np.ndarray]
    captions: list[str]
    # Index of the first image in the whole evaluation (orders batches gathered from several processes).
    start: int = 0


def batch_starts(total: int, batch_size: int) -> list[int]:
    """First indices of this process's batches: all of them, or every world-th from its rank under torchrun."""
    starts = list(range(0, total, max(1, batch_size)))
    return starts[dist.get_rank() :: dist.get_world_size()]


def apply_settings(cfg: Config, settings: dict[str, Any]) -> Config:
    """Set dotted config keys from explicit CLI options (None values are skipped) and validate."""
    for key, value in settings.items():
        if value is not None:
            set_value(cfg, key, value)
    validate(cfg)
    check_eval_config(cfg.eval)
    return cfg


def check_eval_config(ecfg: EvalConfig) -> None:
    """Range checks of the eval section."""
    if ecfg.num < 0:
        raise RatlipError(f"eval.num must be >= 0 (0: use eval.passes), got {ecfg.num}")
    if ecfg.num == 0 and ecfg.passes < 1:
        raise RatlipError(f"eval.passes must be >= 1, got {ecfg.passes}")
    if ecfg.batch_size < 1:
        raise RatlipError(f"eval.batch_size must be >= 1, got {ecfg.batch_size}")
    if ecfg.r_precision_candidates < 2:
        raise RatlipError(f"eval.r_precision_candidates must be >= 2, got {ecfg.r_precision_candidates}")
    if ecfg.kid_subsets < 1 or ecfg.kid_subset_size < 2:
        raise RatlipError("eval.kid_subsets must be >= 1 and eval.kid_subset_size >= 2")


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Progress]:
    """Rich progress bars on stderr (stdout stays clean for --json)."""
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=not enabled,
        transient=False,
    )
    with bars:
        yield bars


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
        "created": _now(),
        "ratlip": __version__,
    }
    root = psd_sqrt(stats.sigma)  # FID's costly eigendecomposition, done once per reference
    arrays = dict(mu=stats.mu, sigma=stats.sigma, sigma_sqrt=root, features=feats, meta=np.array(json.dumps(meta)))
    atomic_write(path, lambda fh: np.savez(fh, **arrays))
    return ReferenceStats(stats, feats, path, meta, root)


# ----------------------------------------------------------------------------- image sources


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """Generator output (B, 3, H, W), unbounded, -> clamp to [-1, 1] -> rounded uint8 (H, W, 3) arrays."""
    x = images.detach().float()
    if not torch.isfinite(x).all():
        warn(f"generator produced {int((~torch.isfinite(x)).sum())} non-finite pixel values; scored as 0")
        x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return list(x.permute(0, 2, 3, 1).cpu().numpy())


def latent(seed: int, index: int, z_dim: int) -> torch.Tensor:
    """z for image `index`: N(0, 1), from (seed, index) alone, so it does not depend on the batch size."""
    return torch.from_numpy(np.random.default_rng([seed, index]).standard_normal(z_dim).astype(np.float32))


def generate_batches(
    loaded, captions: Sequence[str], batch_size: int, seed: int, device: torch.device,
    starts: Sequence[int] | None = None,
) -> Iterator[ImageBatch]:
    """Images from `loaded` (LoadedGenerator: generator, backbone, tokenizer, cfg) for `captions`
    (only the batches beginning at `starts`, when given)."""
    gen, backbone, tokenizer = loaded.generator, loaded.backbone, loaded.tokenizer
    from ratlip_cli.export import noise_dim

    z_dim = noise_dim(loaded)
    gen.eval()
    for start in range(0, len(captions), batch_size) if starts is None else starts:
        caps = list(captions[start : start + batch_size])
        z = torch.stack([latent(seed, start + i, z_dim) for i in range(len(caps))]).to(device)
        with torch.no_grad():
            sentence = backbone.encode_text(tokenizer(caps).to(device))[0]
            images = gen(z, sentence)
        yield ImageBatch(to_uint8(images), caps, start)


def embed_batches(batches: Iterable[ImageBatch], scorer, out: tuple[list[torch.Tensor], list[str]]
                  ) -> Iterator[ImageBatch]:
    """Pass batches through, appending ``scorer``'s image embeddings and the captions to ``out``."""
    for batch in batches:
        out[0].append(scorer.embed_images(batch.images))
        out[1].extend(batch.captions)
        yield batch


def scorer_r_precision(scorer, image_emb: torch.Tensor, captions: list[str], split: ReferenceSplit,
                       ecfg: EvalConfig, seed: int) -> dict[str, Any]:
    """R-precision (%) with a family's own encoders (DM-GAN: AttnGAN's DAMSM R-precision): each image's
    code against its caption and ``r_precision_candidates - 1`` wrong captions drawn as for CLIP R-precision."""
    pool, excluded_by_text = split.pool()
    pool_index = {t: i for i, t in enumerate(pool)}
    excluded = [set(excluded_by_text.get(c, ())) | ({pool_index[c]} if c in pool_index else set()) for c in captions]
    negatives = sample_negatives(excluded, len(pool), ecfg.r_precision_candidates - 1, seed)
    rp = r_precision(image_emb, scorer.embed_texts(list(captions)), scorer.embed_texts(pool), negatives)
    key = scorer.name.lower()
    return {f"{key}_r_precision": rp, f"{key}_r_precision_candidates": int(negatives.shape[1]) + 1}


def save_batches(batches: Iterable[ImageBatch], folder: Path) -> Iterator[ImageBatch]:
    """Pass batches through, writing them as PNGs plus `captions.csv` (readable by folder mode)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for batch in batches:
        for img, cap in zip(batch.images, batch.captions):
            name = f"{len(rows):06d}.png"
            atomic_write(folder / name, lambda fh, img=img: Image.fromarray(img).save(fh, format="PNG"), fsync=False)
            rows.append((name, cap))
        yield batch
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file", "caption"])
    writer.writerows(rows)
    write_text(folder / "captions.csv", buf.getvalue())


def read_captions_file(path: str | Path, images_dir: str | Path) -> list[tuple[Path, str]]:
    """Parse a captions CSV (header `file,caption`; `file` relative to `images_dir`) and check it."""
    import pandas as pd

    path, images_dir = Path(path).expanduser(), Path(images_dir).expanduser()
    if not images_dir.is_dir():
        raise RatlipError(f"images folder not found: {images_dir}")
    if not path.is_file():
        raise RatlipError(f"captions file not found: {path} (a CSV with columns file,caption)")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = (str(exc).splitlines() or ["unreadable"])[0]
        raise RatlipError(f"captions file {path} is not a CSV with columns file,caption: {reason}") from None
    missing = [c for c in ("file", "caption") if c not in table.columns]
    if missing:
        found = ",".join(map(str, table.columns)) or "nothing"
        raise RatlipError(f"captions file {path} needs a header line with columns file,caption; found: {found}")
    if table.empty:
        raise RatlipError(f"captions file {path} lists no images")
    entries, seen = [], set()
    for row, (name, caption) in enumerate(zip(table["file"], table["caption"]), start=1):
        if not name.strip():
            raise RatlipError(f"captions file {path}, row {row}: empty file name")
        if not caption.strip():
            raise RatlipError(f"captions file {path}, row {row}: empty caption for {name}")
        if name in seen:
            raise RatlipError(f"captions file {path}, row {row}: {name} is listed twice")
        seen.add(name)
        full = images_dir / name
        if not full.is_file():
            raise RatlipError(f"captions file {path}, row {row}: image not found: {full}")
        entries.append((full, caption))
    extra = sum(1 for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) - len(entries)
    if extra > 0:
        warn(f"{extra} images in {images_dir} are not listed in {path.name} and are not scored")
    return entries


def read_image(path: Path) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3), as clean-fid reads it."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise RatlipError(f"cannot read image {path}: {exc}") from None


def folder_batches(
    entries: Sequence[tuple[Path, str]], batch_size: int, starts: Sequence[int] | None = None
) -> Iterator[ImageBatch]:
    """Batches of (image, caption) read from disk in the captions file's order (only those beginning at
    `starts`, when given)."""
    for start in range(0, len(entries), batch_size) if starts is None else starts:
        chunk = entries[start : start + batch_size]
        yield ImageBatch([read_image(p) for p, _ in chunk], [c for _, c in chunk], start)


# ----------------------------------------------------------------------------- scoring


@dataclass
class Collected:
    """What the scoring pass keeps per image: features, CLIP image embedding, caption."""

    features: np.ndarray
    image_emb: torch.Tensor
    captions: list[str]
    image_size: tuple[int, int]


def collect(
    batches: Iterable[ImageBatch],
    total: int,
    extractor: FeatureExtractor,
    clip: ClipScorer,
    bars: Progress | None = None,
    description: str = "scoring images",
) -> Collected:
    """Stream batches through the feature extractor and the evaluation CLIP; under torchrun, gather every
    process's batches in their original order (`total`: this process's images, for the progress bar)."""
    parts = []
    task = bars.add_task(description, total=total) if bars else None
    for batch in batches:
        if batch.images:
            parts.append((batch.start, extractor(batch.images), clip.embed_images(batch.images).cpu(),
                          list(batch.captions), tuple(batch.images[0].shape[:2])))
        if bars is not None:
            bars.advance(task, len(batch.images))
    parts = sorted((p for rank_parts in dist.all_gather_object(parts) for p in rank_parts), key=lambda p: p[0])
    if not parts:
        raise RatlipError("no images to evaluate")
    caps = [c for p in parts for c in p[3]]
    return Collected(np.concatenate([p[1] for p in parts]), torch.cat([p[2] for p in parts]), caps, parts[0][4])


def compute_metrics(
    got: Collected, reference: ReferenceStats, split: ReferenceSplit, clip: ClipScorer, ecfg: EvalConfig, seed: int
) -> dict[str, Any]:
    """FID, KID (x1e3), CLIP score (x100) and CLIP R-precision (%) of collected images."""
    gen_stats = feature_stats(got.features)
    fid = fid_from_stats(gen_stats, reference.stats, reference.sigma_sqrt)
    kid, kid_std = kernel_distance(got.features, reference.features, ecfg.kid_subsets, ecfg.kid_subset_size, seed)

    unique = sorted(set(got.captions))
    text_emb = clip.embed_texts(unique)
    row_of = {t: i for i, t in enumerate(unique)}
    true_emb = text_emb[[row_of[c] for c in got.captions]]
    cs = clip_score(got.image_emb, true_emb)

    pool, excluded_by_text = split.pool()
    pool_index = {t: i for i, t in enumerate(pool)}
    excluded = []
    for cap in got.captions:
        excl = set(excluded_by_text.get(cap, ()))
        if cap in pool_index:
            excl.add(pool_index[cap])
        excluded.append(excl)
    negatives = sample_negatives(excluded, len(pool), ecfg.r_precision_candidates - 1, seed)
    used = np.unique(negatives)
    pool_emb = torch.zeros(len(pool), text_emb.shape[1])
    pool_emb[torch.from_numpy(used)] = clip.embed_texts([pool[i] for i in used])
    rp = r_precision(got.image_emb, true_emb, pool_emb, negatives)
    return {
        "fid": fid,
        "kid_x1e3": kid * 1e3,
        "kid_std_x1e3": kid_std * 1e3,
        "clip_score": cs,
        "r_precision": rp,
        "r_precision_candidates": int(negatives.shape[1]) + 1,
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _score(
    batches: Iterable[ImageBatch],
    total: int,
    cfg: Config,
    opts: EvalOptions,
    split: ReferenceSplit,
    extractor: FeatureExtractor,
    clip: ClipScorer,
    bars: Progress,
    description: str,
) -> tuple[dict[str, Any], Collected, ReferenceStats]:
    """The path both modes share: collect, reference statistics at the evaluated size, metrics
    (under torchrun the metrics are computed on rank 0 only; other processes get None)."""
    got = collect(batches, total, extractor, clip, bars, description)
    height, width = got.image_size
    if height != width and dist.is_main():
        warn(f"evaluated images are {width}x{height}, not square; reference images are centre-cropped squares")
    size = opts.ref_size or min(height, width)
    reference = reference_statistics(split, size, extractor, cfg.eval.cache_dir, cfg.eval.batch_size, bars)
    if not dist.is_main():
        return None, got, None
    metrics = compute_metrics(got, reference, split, clip, cfg.eval, opts.seed)
    return metrics, got, reference


def _row(
    mode: str,
    source: str,
    metrics: dict,
    got: Collected,
    reference: ReferenceStats,
    cfg: Config,
    opts: EvalOptions,
    extractor: FeatureExtractor,
    clip: ClipScorer,
    device: torch.device,
    started: float,
) -> dict[str, Any]:
    ecfg = cfg.eval
    return {
        "time": _now(),
        "mode": mode,
        "source": source,
        "generator": "",  # run mode: ema or raw (set by evaluate_run); folder mode: given images
        "num_images": len(got.captions),
        "passes": ecfg.passes if mode == "run" and ecfg.num == 0 else "",
        "fid": metrics["fid"],
        "kid_x1e3": metrics["kid_x1e3"],
        "kid_std_x1e3": metrics["kid_std_x1e3"],
        "clip_score": metrics["clip_score"],
        "r_precision": metrics["r_precision"],
        "r_precision_candidates": metrics["r_precision_candidates"],
        "fid_mode": extractor.mode,
        "feature_extractor": NOT_FID_MARK if extractor.name == "random-tiny" else extractor.name,
        "feature_weights": extractor.identity,
        "eval_clip": clip.identity,
        "clip_metrics_note": clip.note,
        "image_size": got.image_size[0],
        "ref_size": reference.meta.get("size", ""),
        "ref_images": reference.meta.get("num_images", ""),
        "ref_cache": reference.path.name,
        "dataset": str(Path(reference.meta.get("dataset", ""))),
        "split": reference.meta.get("split", ""),
        "seed": opts.seed,
        "kid_subsets": ecfg.kid_subsets,
        "kid_subset_size": ecfg.kid_subset_size,
        "device": str(device),
        "ratlip": __version__,
        "seconds": round(time.time() - started, 1),
    }


def _warn_protocol(extractor: FeatureExtractor, num_images: int) -> None:
    if extractor.name == "random-tiny":
        warn(
            "feature_extractor=random-tiny: the fid/kid numbers come from a random 16-d test network, "
            "NOT Inception-V3; never report them as FID"
        )
    elif num_images <= extractor.dim:
        warn(
            f"FID from {num_images} images (<= {extractor.dim} feature dims) is strongly biased upward; "
            "compare only at equal image counts (paper protocol: --passes 12)"
        )


# ----------------------------------------------------------------------------- the two modes


def _eval_tools(
    cfg: Config, device: torch.device, run_dir: Path | None = None
) -> tuple[FeatureExtractor, ClipScorer]:
    """Feature extractor and evaluation CLIP: loaded first, so missing weights fail before any work.

    `eval.clip_weights: in-domain` is the run's own copy of its in-domain CLIP when the run trained
    with one, else the cache for `cfg` (pretrained now when missing)."""
    from ratlip_cli.clip_pretrain import IN_DOMAIN, ensure_in_domain_clip, in_domain_label

    ecfg = cfg.eval
    extractor = build_feature_extractor(ecfg.feature_extractor, ecfg.fid_mode, ecfg.inception, device)
    if ecfg.clip_weights == IN_DOMAIN:
        if ecfg.clip_arch != cfg.clip.arch:
            raise RatlipError(
                f"eval.clip_weights=in-domain is the CLIP pretrained for clip.arch {cfg.clip.arch}; "
                f"set eval.clip_arch={cfg.clip.arch} (it is {ecfg.clip_arch})"
            )
        own = run_dir / "clip.safetensors" if run_dir is not None and cfg.clip.weights == IN_DOMAIN else None
        weights = str(own if own is not None and own.is_file() else ensure_in_domain_clip(cfg))
        clip = load_eval_clip(ecfg.clip_arch, weights, cfg.clip.cache_dir, device, label=in_domain_label(cfg))
    else:
        clip = load_eval_clip(ecfg.clip_arch, ecfg.clip_weights, cfg.clip.cache_dir, device)
    return extractor, clip


def _load_generator(run_dir: Path, device: torch.device, which: str | None = None):
    try:
        from ratlip_cli.export import load_generator
    except ImportError:
        raise RatlipError(
            "this install lacks ratlip_cli.export.load_generator (cannot load a run's generator)"
        ) from None
    return load_generator(run_dir, device, which)


def _start_processes(device: torch.device, opts: EvalOptions) -> None:
    """Join torchrun's process group when launched by it (nothing in a plain process)."""
    if not dist.launched_by_torchrun():
        return
    if opts.save_images:
        raise RatlipError("--save-images works in one process only; run it without torchrun")
    dist.init_from_env(device.type)


def run_config(run_dir: Path) -> Config | None:
    """The run's saved config (`config.yaml`), or None when the run folder has none."""
    path = run_dir / "config.yaml"
    return load_config(path) if path.is_file() else None


def evaluate_run(run_dir: str | Path, settings: dict[str, Any], opts: EvalOptions) -> dict[str, Any]:
    """Generate images for the test split's captions with the run's exported generator (`eval.generator`) and score
    them; appends the row to `runs/NAME/eval.csv` (or `opts.out_csv`) and returns it."""
    started = time.time()
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise RatlipError(f"run folder not found: {run_dir} (pass --run runs/NAME)")
    device = resolve_device(opts.device)
    _start_processes(device, opts)
    cfg = run_config(run_dir)
    loaded = None
    if cfg is None:
        loaded = _load_generator(run_dir, device, settings.get("eval.generator"))
        cfg = loaded.cfg
    cfg = apply_settings(cfg, settings)
    split = load_test_split(opts.dataset or cfg.data.root, opts.split, "" if opts.dataset else cfg.data.shard_url)
    extractor, clip = _eval_tools(cfg, device, run_dir)
    if loaded is None:
        loaded = _load_generator(run_dir, device, cfg.eval.generator)
    captions = plan_captions(split, cfg.eval.passes, cfg.eval.num, opts.seed)
    if dist.is_main():
        _warn_protocol(extractor, len(captions))
    starts = batch_starts(len(captions), cfg.eval.batch_size)
    mine = sum(len(captions[s : s + cfg.eval.batch_size]) for s in starts)
    with progress_bars(opts.progress and dist.is_main()) as bars:
        batches: Iterable[ImageBatch] = generate_batches(
            loaded, captions, cfg.eval.batch_size, opts.seed, device, starts
        )
        if opts.save_images:
            batches = save_batches(batches, Path(opts.save_images))
        scorer = loaded.text.retrieval_scorer() if getattr(loaded, "text", None) is not None else None
        extra: tuple[list[torch.Tensor], list[str]] = ([], [])
        if scorer is not None and dist.get_world_size() > 1:
            if dist.is_main():
                warn(f"{scorer.name} R-precision is computed by single-process evaluation only; not reported")
        elif scorer is not None:
            batches = embed_batches(batches, scorer, extra)
        metrics, got, reference = _score(batches, mine, cfg, opts, split, extractor, clip, bars, "generating + scoring")
    row = None
    if dist.is_main():
        row = _row("run", run_dir.name, metrics, got, reference, cfg, opts, extractor, clip, device, started)
        row["generator"] = getattr(loaded, "which", cfg.eval.generator)
        if extra[0]:
            row.update(scorer_r_precision(scorer, torch.cat(extra[0]), extra[1], split, cfg.eval, opts.seed))
        append_csv(Path(opts.out_csv) if opts.out_csv else run_dir / "eval.csv", row)
    return dist.broadcast_object(row)


def evaluate_folder(
    images_dir: str | Path, captions_file: str | Path, cfg: Config, opts: EvalOptions
) -> dict[str, Any]:
    """Score a folder of images listed with their captions in a CSV (`file,caption`) against the
    reference split of `opts.dataset`; appends the row to `opts.out_csv` when given and returns it."""
    started = time.time()
    if not opts.dataset:
        raise RatlipError(
            "--dataset DIR is required with --images (the prepared dataset whose test split is the reference)"
        )
    check_eval_config(cfg.eval)
    device = resolve_device(opts.device)
    _start_processes(device, opts)
    entries = read_captions_file(captions_file, images_dir)
    split = load_test_split(opts.dataset, opts.split)
    extractor, clip = _eval_tools(cfg, device)
    if dist.is_main():
        _warn_protocol(extractor, len(entries))
    starts = batch_starts(len(entries), cfg.eval.batch_size)
    mine = sum(len(entries[s : s + cfg.eval.batch_size]) for s in starts)
    with progress_bars(opts.progress and dist.is_main()) as bars:
        batches = folder_batches(entries, cfg.eval.batch_size, starts)
        metrics, got, reference = _score(batches, mine, cfg, opts, split, extractor, clip, bars, "scoring images")
    row = None
    if dist.is_main():
        row = _row("folder", str(Path(images_dir)), metrics, got, reference, cfg, opts, extractor, clip, device,
                   started)
        if opts.out_csv:
            append_csv(Path(opts.out_csv), row)
    return dist.broadcast_object(row)


# ----------------------------------------------------------------------------- output


def append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append `row` to a CSV (created with a header); a file with other columns is rewritten with the union."""
    header = list(row)
    if path.is_file() and path.stat().st_size > 0:
        with open(path, newline="", encoding="utf-8") as fh:
            existing = list(csv.DictReader(fh))
            old_header = list(existing[0].keys()) if existing else header
        if old_header == header:
            with open(path, "a", newline="", encoding="utf-8") as fh:
                csv.DictWriter(fh, fieldnames=header).writerow(row)
            return
        header = old_header + [k for k in header if k not in old_header]
        rows = existing + [row]
    else:
        rows = [row]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def results_table(row: dict[str, Any]) -> Table:
    """The metrics and the protocol of one evaluation as a Rich table."""
    from rich.markup import escape

    not_fid = row["feature_extractor"] == NOT_FID_MARK
    table = Table(title=f"ratlip eval: {escape(str(row['source']))}", show_header=True)
    table.add_column("metric", style="bold")
    table.add_column("value", overflow="fold")
    if not_fid:
        table.add_row("FID [red](random-tiny, NOT FID)[/red]", f"{row['fid']:.3f}")
        kid = f"{row['kid_x1e3']:.3f} ± {row['kid_std_x1e3']:.3f}"
        table.add_row("KID x1e3 [red](random-tiny, NOT KID)[/red]", kid)
    else:
        table.add_row(f"FID (clean-fid, mode {row['fid_mode']})", f"{row['fid']:.3f}")
        table.add_row("KID x1e3", f"{row['kid_x1e3']:.3f} ± {row['kid_std_x1e3']:.3f}")
    note = clip_metrics_note(str(row.get("eval_clip", "")))
    mark = f" [red]({escape(note)})[/red]" if note == RANDOM_CLIP_NOTE else f" [yellow]({escape(note)})[/yellow]" if note else ""
    table.add_row(f"CLIP score (x100){mark}", f"{row['clip_score']:.2f}")
    table.add_row(
        f"CLIP R-precision (%, top-1 of {row['r_precision_candidates']}){mark}", f"{row['r_precision']:.2f}"
    )
    if row.get("damsm_r_precision", "") != "":
        table.add_row(f"DAMSM R-precision (%, top-1 of {row['damsm_r_precision_candidates']}, the run's encoders)",
                      f"{row['damsm_r_precision']:.2f}")
    table.add_section()
    protocol = [
        ("generator", row.get("generator") or "- (images given)"),
        ("images", f"{row['num_images']} at {row['image_size']} px, passes: {row['passes'] or '-'}"),
        ("reference", f"{row['ref_images']} {row['split']} images of {row['dataset']} at {row['ref_size']} px"),
        ("features", f"{row['feature_extractor']}: {row['feature_weights']}"),
        ("eval CLIP", row["eval_clip"]),
        ("seed / device", f"{row['seed']} / {row['device']}"),
    ]
    for name, value in protocol:
        table.add_row(name, escape(str(value)), style="dim")
    return table


def report(row: dict[str, Any], as_json: bool = False) -> None:
    """Print the table (stdout), or JSON on stdout and the table on stderr."""
    if as_json:
        err_console.print(results_table(row))
        console.print(json.dumps(row), highlight=False, markup=False, soft_wrap=True)
    else:
        console.print(results_table(row))


def run_eval_command(
    run: Path | None,
    images: Path | None,
    captions: Path | None,
    settings: dict[str, Any],
    opts: EvalOptions,
    base_cfg: Config | None = None,
    as_json: bool = False,
) -> dict[str, Any]:
    """What `ratlip eval` does: check the mode, evaluate, append the CSV row, print."""
    from ratlip_cli.profiling import tune_cpu_allocator

    # Inception activations are large, short-lived CPU tensors: without this glibc maps and
    # page-faults them in anew for every batch (docs/benchmarks.md, "Evaluation speed").
    tune_cpu_allocator(True)
    if (run is None) == (images is None):
        raise RatlipError("give either --run runs/NAME or --images DIR --captions FILE --dataset DIR")
    if settings.get("eval.num") is not None and settings.get("eval.passes") is not None:
        raise RatlipError("give --num or --passes, not both")
    if settings.get("eval.passes") is not None:
        settings = {**settings, "eval.num": 0}
    if run is not None:
        if captions is not None:
            raise RatlipError("--captions belongs to folder mode (--images); run mode uses the test split's captions")
        try:
            row = evaluate_run(run, settings, opts)
        finally:
            dist.destroy()
    else:
        if captions is None:
            raise RatlipError("--images needs --captions FILE (a CSV with columns file,caption)")
        if opts.save_images:
            raise RatlipError("--save-images is for run mode; folder mode already has its images")
        cfg = apply_settings(base_cfg if base_cfg is not None else Config(), settings)
        try:
            row = evaluate_folder(images, captions, cfg, opts)
        finally:
            dist.destroy()
    if int(os.environ.get("RANK", "0")) == 0:  # the process group is gone by now; torchrun's rank stays
        report(row, as_json)
    return row
