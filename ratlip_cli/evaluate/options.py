"""Options, settings and progress bars of `ratlip eval`, and the batch type both modes produce."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ratlip_cli import dist
from ratlip_cli.config import Config, EvalConfig, set_value, validate
from ratlip_cli.errors import RatlipError
from ratlip_cli.progress import progress_bars  # noqa: F401  (re-exported: eval's bars)


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
    # export (the run's exported generator), last, all or best (the retained checkpoints; best exports
    # the lowest-FID one to runs/NAME/export-best/).
    checkpoints: str = "export"


@dataclass
class ImageBatch:
    """uint8 RGB images (H, W, 3) and the caption each was made from."""

    images: list[np.ndarray]
    captions: list[str]
    # Index of the first image in the whole evaluation (orders batches gathered from several processes).
    start: int = 0
    # The generator's float output (B, 3, H, W), before rounding (run mode); the galip protocol scores it.
    tensors: Any = None


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


PROTOCOLS = ("clean-fid", "galip")
METRICS = ("fid", "kid", "cs", "rp", "is", "prdc")
DEFAULT_METRICS = {
    "clean-fid": ("fid", "kid", "cs", "rp"),
    "galip": ("fid", "cs", "is", "prdc"),  # what the release reports (FID, CS), plus IS and P/R/D/C
}
METRIC_HELP = "fid, kid, cs (CLIP score), rp (CLIP R-precision), is (Inception Score), prdc (precision/recall/density/coverage)"


def parse_metrics(text: str, protocol: str) -> tuple[str, ...]:
    """`eval.metrics` ("" = the protocol's defaults, "all", or a comma list) as metric names in a fixed order."""
    if protocol not in PROTOCOLS:
        raise RatlipError(f"unknown protocol '{protocol}'; choose one of: {', '.join(PROTOCOLS)}")
    text = (text or "").strip().lower()
    if not text:
        return DEFAULT_METRICS[protocol]
    if text == "all":
        return METRICS
    asked = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in asked if m not in METRICS]
    if unknown or not asked:
        raise RatlipError(f"unknown metric(s) {', '.join(unknown) or text!r} in --metrics; choose from {METRIC_HELP}, or all")
    return tuple(m for m in METRICS if m in asked)


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
    metrics = parse_metrics(ecfg.metrics, ecfg.protocol)
    if ecfg.ref_stats and not Path(ecfg.ref_stats).expanduser().is_file():
        raise RatlipError(f"--ref-stats file not found: {ecfg.ref_stats}")
    if ecfg.ref_stats and "fid" not in metrics:
        raise RatlipError("--ref-stats gives FID's reference statistics, but --metrics has no fid")
