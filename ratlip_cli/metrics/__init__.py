"""Image-generation metrics: FID and KID (`fid`), their feature extractors (`features`), and CLIP
score / CLIP R-precision (`clip_score`). Numbers in, numbers out: no files, no CLI."""

from ratlip_cli.metrics.clip_score import ClipScorer, clip_score, load_eval_clip, r_precision, sample_negatives
from ratlip_cli.metrics.features import FeatureExtractor, RandomTinyNet, build_feature_extractor, random_tiny
from ratlip_cli.metrics.fid import (
    GaussianStats,
    feature_stats,
    fid_from_features,
    fid_from_stats,
    frechet_distance,
    kernel_distance,
    psd_sqrt,
)

__all__ = [
    "ClipScorer",
    "FeatureExtractor",
    "GaussianStats",
    "RandomTinyNet",
    "build_feature_extractor",
    "clip_score",
    "feature_stats",
    "fid_from_features",
    "fid_from_stats",
    "frechet_distance",
    "kernel_distance",
    "load_eval_clip",
    "psd_sqrt",
    "r_precision",
    "random_tiny",
    "sample_negatives",
]
