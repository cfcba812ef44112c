"""Scoring: collect features and embeddings, compute FID, KID, CLIP score and R-precision, build the row."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
from rich.progress import Progress

from ratlip_cli import __version__, dist
from ratlip_cli.config import Config, EvalConfig
from ratlip_cli.console import warn
from ratlip_cli.errors import RatlipError
from ratlip_cli.data.split import dataset_record
from ratlip_cli.files import utc_timestamp
from ratlip_cli.metrics.clip_score import (
    ClipScorer,
    clip_score,
    r_precision,
    sample_negatives,
)
from ratlip_cli.metrics.features import FeatureExtractor
from ratlip_cli.metrics.fid import feature_stats, fid_from_stats, kernel_distance
from ratlip_cli.evaluate.options import (
    NOT_FID_MARK,
    EvalOptions,
    ImageBatch,
)
from ratlip_cli.evaluate.reference import (
    ReferenceSplit,
    ReferenceStats,
    reference_statistics,
)


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
    split: ReferenceSplit,
    cfg: Config,
    opts: EvalOptions,
    extractor: FeatureExtractor,
    clip: ClipScorer,
    device: torch.device,
    started: float,
) -> dict[str, Any]:
    """The eval.csv row; the dataset is the one evaluated (its folder and content fingerprint), not the
    folder the cached reference statistics were first computed from."""
    ecfg = cfg.eval
    record = dataset_record(split)
    return {
        "time": utc_timestamp(),
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
        "dataset": record["dataset"],
        "split": record["split"],
        "dataset_fingerprint": record["fingerprint"],
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
