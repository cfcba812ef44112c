"""Scoring: collect features and embeddings, compute the selected metrics (FID, KID, CLIP score,
R-precision, Inception Score, precision/recall/density/coverage) under a protocol, build the row."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
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
from ratlip_cli.metrics.fid import GaussianStats, feature_stats, fid_from_stats, kernel_distance
from ratlip_cli.metrics.galip_fid import TORCHVISION_FILE, GalipFeatures, release_clamp
from ratlip_cli.metrics.inception_score import inception_score, logits_weight
from ratlip_cli.metrics.prdc import DC_K, PR_K, prdc
from ratlip_cli.evaluate.options import (
    NOT_FID_MARK,
    EvalOptions,
    ImageBatch,
)
from ratlip_cli.evaluate.protocols import DEFAULT_METRICS, galip_reference, load_ref_stats, parse_metrics
from ratlip_cli.evaluate.reference import (
    ReferenceSplit,
    ReferenceStats,
    reference_statistics,
)


# ----------------------------------------------------------------------------- scoring

METRIC_COLUMNS = (
    "fid", "kid_x1e3", "kid_std_x1e3", "clip_score", "r_precision", "r_precision_candidates",
    "inception_score", "inception_score_std", "is_note", "precision", "recall", "density", "coverage", "pr_k", "dc_k",
)  # fmt: skip


@dataclass
class Collected:
    """What the scoring pass keeps per image: features, CLIP image embedding, caption (and the batch sizes)."""

    features: np.ndarray
    image_emb: torch.Tensor
    captions: list[str]
    image_size: tuple[int, int]
    batch_sizes: list[int] = field(default_factory=list)


def signed_unit(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images -> float (B, 3, H, W) in [-1, 1] (folder mode of the galip protocol)."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def collect(
    batches: Iterable[ImageBatch],
    total: int,
    extractor: FeatureExtractor | GalipFeatures,
    clip: ClipScorer,
    bars: Progress | None = None,
    description: str = "scoring images",
    galip: bool = False,
) -> Collected:
    """Stream batches through the feature extractor and the evaluation CLIP; under torchrun, gather every
    process's batches in their original order (`total`: this process's images, for the progress bar).
    `galip`: the release's path, on the generator's float images (`batch.tensors`, else the uint8 ones
    mapped to [-1, 1]): its Inception input and its CLIP input (`transf_to_CLIP_input`)."""
    parts = []
    task = bars.add_task(description, total=total) if bars else None
    for batch in batches:
        if batch.images:
            if galip:
                x = release_clamp(batch.tensors if batch.tensors is not None else signed_unit(batch.images))
                feats, emb = extractor.from_generated(x), clip.embed_images_authors(x)
            else:
                feats, emb = extractor(batch.images), clip.embed_images(batch.images).cpu()
            parts.append((batch.start, feats, emb, list(batch.captions), tuple(batch.images[0].shape[:2])))
        if bars is not None:
            bars.advance(task, len(batch.images))
    parts = sorted((p for rank_parts in dist.all_gather_object(parts) for p in rank_parts), key=lambda p: p[0])
    if not parts:
        raise RatlipError("no images to evaluate")
    caps = [c for p in parts for c in p[3]]
    return Collected(np.concatenate([p[1] for p in parts]), torch.cat([p[2] for p in parts]), caps, parts[0][4],
                     [len(p[3]) for p in parts])


def inception_logits(extractor) -> tuple[np.ndarray | None, str]:
    """The 1008-way softmax weights of the extractor's Inception file, or None and why not."""
    if isinstance(extractor, GalipFeatures):
        return extractor.logits, extractor.is_note
    if extractor.name != "inception":
        return None, "random-tiny has no class logits (tests only)"
    source = getattr(extractor, "source", None)
    if source is None:
        return None, f"fid mode {extractor.mode}: its network has no 1008-way logits here; use fid mode clean"
    from ratlip_cli.metrics.inception import _jit_load

    weight = logits_weight(_jit_load(source))
    if weight is None:
        return None, (f"{source.name} stops at pool3 (no 1008-way logits); IS needs clean-fid's "
                      "inception-2015-12-05.pt (--inception)")
    return weight, ""


def compute_metrics(
    got: Collected,
    reference: ReferenceStats | None,
    split: ReferenceSplit,
    clip: ClipScorer,
    ecfg: EvalConfig,
    seed: int,
    metrics: tuple[str, ...] = DEFAULT_METRICS["clean-fid"],
    fid_stats: GaussianStats | None = None,
    extractor=None,
    protocol: str = "clean-fid",
) -> dict[str, Any]:
    """The selected metrics of collected images ("" for those not asked for): FID (against `fid_stats`
    when given, else the reference), KID (x1e3), CLIP score (x100), CLIP R-precision (%), Inception
    Score, precision/recall/density/coverage."""
    out: dict[str, Any] = {k: "" for k in METRIC_COLUMNS}
    if "fid" in metrics:
        if fid_stats is not None:
            out["fid"] = fid_from_stats(feature_stats(got.features), fid_stats)
        else:
            out["fid"] = fid_from_stats(feature_stats(got.features), reference.stats, reference.sigma_sqrt)
    if "kid" in metrics:
        kid, kid_std = kernel_distance(got.features, reference.features, ecfg.kid_subsets, ecfg.kid_subset_size, seed)
        out["kid_x1e3"], out["kid_std_x1e3"] = kid * 1e3, kid_std * 1e3
    if "is" in metrics:
        weight, note = inception_logits(extractor)
        out["is_note"] = note
        if weight is not None:
            out["inception_score"], out["inception_score_std"] = inception_score(got.features, weight)
    if "prdc" in metrics:
        out.update(prdc(reference.features, got.features))
        out["pr_k"], out["dc_k"] = PR_K, DC_K
    if "cs" not in metrics and "rp" not in metrics:
        return out
    unique = sorted(set(got.captions))
    text_emb = clip.embed_texts(unique)
    row_of = {t: i for i, t in enumerate(unique)}
    true_emb = text_emb[[row_of[c] for c in got.captions]]
    if "cs" in metrics and protocol == "galip":  # the release: mean over batches of each batch's mean cosine
        cos = (got.image_emb.double() * torch.nn.functional.normalize(true_emb.double(), dim=-1)).sum(-1)
        bounds = np.cumsum([0, *got.batch_sizes])
        out["clip_score"] = float(np.mean([cos[a:b].mean().item() for a, b in pairwise(bounds)]) * 100.0)
    elif "cs" in metrics:
        out["clip_score"] = clip_score(got.image_emb, true_emb)
    if "rp" not in metrics:
        return out

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
    out["r_precision"] = r_precision(got.image_emb, true_emb, pool_emb, negatives)
    out["r_precision_candidates"] = int(negatives.shape[1]) + 1
    return out


def _warn_ref_stats(protocol: str, extractor, path: str) -> None:
    if protocol == "galip" and getattr(extractor, "kind", "") != "torchvision":
        warn(
            f"--ref-stats {Path(path).name}: FID against a statistics file is only meaningful with the network that "
            "made it; the authors' bird_val256_FIDK0.npz was made with torchvision's ImageNet Inception (DF-GAN "
            f"code/eval/FID/inception.py), and this is {extractor.kind}: pass --inception {TORCHVISION_FILE} "
            "for the release's network"
        )


def _score(
    batches: Iterable[ImageBatch],
    total: int,
    cfg: Config,
    opts: EvalOptions,
    split: ReferenceSplit,
    extractor,
    clip: ClipScorer,
    bars: Progress,
    description: str,
) -> tuple[dict[str, Any], Collected, ReferenceStats | None]:
    """The path both modes share: collect, reference statistics, metrics (under torchrun the metrics
    are computed on rank 0 only; other processes get None)."""
    ecfg = cfg.eval
    metrics = parse_metrics(ecfg.metrics, ecfg.protocol)
    fid_stats = load_ref_stats(ecfg.ref_stats, extractor.dim) if ecfg.ref_stats and "fid" in metrics else None
    if fid_stats is not None and dist.is_main():
        _warn_ref_stats(ecfg.protocol, extractor, ecfg.ref_stats)
    galip = ecfg.protocol == "galip"
    got = collect(batches, total, extractor, clip, bars, description, galip)
    height, width = got.image_size
    reference = None
    if "kid" in metrics or "prdc" in metrics or ("fid" in metrics and fid_stats is None):
        if galip:
            reference = galip_reference(split, extractor, ecfg.cache_dir, ecfg.batch_size, 0, bars)
        else:
            if height != width and dist.is_main():
                warn(f"evaluated images are {width}x{height}, not square; reference images are centre-cropped squares")
            size = opts.ref_size or min(height, width)
            reference = reference_statistics(split, size, extractor, ecfg.cache_dir, ecfg.batch_size, bars)
    if not dist.is_main():
        return None, got, None
    values = compute_metrics(got, reference, split, clip, ecfg, opts.seed, metrics, fid_stats, extractor, ecfg.protocol)
    return values, got, reference


def _ref_stats_label(path: str) -> str:
    from ratlip_cli.metrics.features import file_sha256

    return f"{Path(path).name} sha256:{file_sha256(Path(path).expanduser())[:12]}" if path else ""


def _row(
    mode: str,
    source: str,
    metrics: dict,
    got: Collected,
    reference: ReferenceStats | None,
    split: ReferenceSplit,
    cfg: Config,
    opts: EvalOptions,
    extractor,
    clip: ClipScorer,
    device: torch.device,
    started: float,
) -> dict[str, Any]:
    """The eval.csv row; the dataset is the one evaluated (its folder and content fingerprint), not the
    folder the cached reference statistics were first computed from. Metrics not asked for are ""."""
    ecfg = cfg.eval
    record = dataset_record(split)
    meta = reference.meta if reference is not None else {}
    return {
        "time": utc_timestamp(),
        "mode": mode,
        "protocol": ecfg.protocol,
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
        "inception_score": metrics["inception_score"],
        "inception_score_std": metrics["inception_score_std"],
        "is_note": metrics["is_note"],
        "precision": metrics["precision"],
        "recall": metrics["recall"],
        "density": metrics["density"],
        "coverage": metrics["coverage"],
        "pr_k": metrics["pr_k"],
        "dc_k": metrics["dc_k"],
        "metrics": ",".join(parse_metrics(ecfg.metrics, ecfg.protocol)),
        "ref_stats": _ref_stats_label(ecfg.ref_stats) if metrics["fid"] != "" else "",
        "fid_mode": extractor.mode,
        "feature_extractor": NOT_FID_MARK if extractor.name == "random-tiny" else extractor.name,
        "feature_weights": extractor.identity,
        "eval_clip": clip.identity,
        "clip_metrics_note": clip.note,
        "image_size": got.image_size[0],
        "ref_size": meta.get("size", ""),
        "ref_images": meta.get("num_images", ""),
        "ref_cache": reference.path.name if reference is not None else "",
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
