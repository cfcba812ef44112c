"""`ratlip eval`: FID, KID, CLIP score, CLIP R-precision, Inception Score and precision/recall/density/
coverage for a run or for any folder of images, under ratlip's protocol (`clean-fid`) or the
GALIP/RATLIP release's (`galip`, `evaluate.protocols`).

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

import os
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from ratlip_cli import dist
from ratlip_cli.clip_pretrain import IN_DOMAIN, ensure_in_domain_clip, in_domain_label
from ratlip_cli.config import Config, load_config
from ratlip_cli.console import warn
from ratlip_cli.dist import resolve_device
from ratlip_cli.errors import RatlipError
from ratlip_cli.export import load_weights
from ratlip_cli.models.trainable import load_trainable_state_dict
from ratlip_cli.metrics.clip_score import ClipScorer, load_eval_clip
from ratlip_cli.metrics.features import FeatureExtractor, build_feature_extractor
from ratlip_cli.metrics.galip_fid import GalipFeatures, build_galip_features
from ratlip_cli.profiling import tune_cpu_allocator
from ratlip_cli.evaluate.options import (  # noqa: F401
    NOT_FID_MARK,
    CACHE_VERSION,
    IMAGE_SUFFIXES,
    EvalOptions,
    ImageBatch,
    batch_starts,
    apply_settings,
    check_eval_config,
    progress_bars,
)
from ratlip_cli.evaluate.protocols import (  # noqa: F401
    DEFAULT_METRICS,
    METRICS,
    PROTOCOLS,
    load_ref_stats,
    parse_metrics,
    plan_captions_galip,
)
from ratlip_cli.evaluate.reference import (  # noqa: F401
    ReferenceSplit,
    load_test_split,
    plan_captions,
    ReferenceStats,
    default_cache_dir,
    reference_cache_path,
    load_reference_image,
    reference_statistics,
)
from ratlip_cli.evaluate.sources import (  # noqa: F401
    to_hwc_arrays,
    generate_batches,
    embed_batches,
    scorer_r_precision,
    save_batches,
    read_captions_file,
    read_image,
    folder_batches,
)
from ratlip_cli.evaluate.scoring import (  # noqa: F401
    Collected,
    collect,
    compute_metrics,
    _score,
    _row,
    _warn_protocol,
)
from ratlip_cli.evaluate.output import (  # noqa: F401
    append_csv,
    results_table,
    report,
)
# ----------------------------------------------------------------------------- the two modes


def _eval_tools(
    cfg: Config, device: torch.device, run_dir: Path | None = None
) -> tuple[FeatureExtractor | GalipFeatures, ClipScorer]:
    """Feature extractor (the protocol's) and evaluation CLIP (`eval_clip`): loaded first, so missing
    weights fail before any work."""
    ecfg = cfg.eval
    if ecfg.protocol == "galip":
        extractor = build_galip_features(ecfg.feature_extractor, ecfg.inception, device)
    else:
        extractor = build_feature_extractor(
            ecfg.feature_extractor, ecfg.fid_mode, ecfg.inception, device, ecfg.inception_graph
        )
    return extractor, eval_clip(cfg, device, run_dir)


def eval_clip(cfg: Config, device: torch.device | str, run_dir: Path | None = None) -> ClipScorer:
    """The evaluation CLIP of `cfg` (`eval.clip_arch`, `eval.clip_weights`), as `ratlip eval` loads it.

    `eval.clip_weights: in-domain` is the run's own copy of its in-domain CLIP when the run trained
    with one, else the cache for `cfg` (pretrained now when missing)."""
    ecfg = cfg.eval
    if ecfg.clip_weights == IN_DOMAIN:
        if ecfg.clip_arch != cfg.clip.arch:
            raise RatlipError(
                f"eval.clip_weights=in-domain is the CLIP pretrained for clip.arch {cfg.clip.arch}; "
                f"set eval.clip_arch={cfg.clip.arch} (it is {ecfg.clip_arch})"
            )
        own = run_dir / "clip.safetensors" if run_dir is not None and cfg.clip.weights == IN_DOMAIN else None
        weights = str(own if own is not None and own.is_file() else ensure_in_domain_clip(cfg))
        return load_eval_clip(ecfg.clip_arch, weights, cfg.clip.cache_dir, device, label=in_domain_label(cfg))
    return load_eval_clip(ecfg.clip_arch, ecfg.clip_weights, cfg.clip.cache_dir, device)


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


def evaluate_run(run_dir: str | Path, settings: dict[str, Any], opts: EvalOptions,
                 checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate images for the test split's captions with the run's exported generator (`eval.generator`), or
    that generator's weights from ``checkpoint`` (`eval_checkpoints.checkpoint_state`), and score them;
    appends the row to `runs/NAME/eval.csv` (or `opts.out_csv`) and returns it."""
    started = time.time()
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise RatlipError(f"run folder not found: {run_dir} (pass --run runs/NAME)")
    device = resolve_device(opts.device)
    _start_processes(device, opts)
    cfg = run_config(run_dir)
    loaded = None
    if cfg is None:
        loaded = load_weights(run_dir, device, settings.get("eval.generator"))
        cfg = loaded.cfg
    cfg = apply_settings(cfg, settings)
    split = load_test_split(opts.dataset or cfg.data.root, opts.split, "" if opts.dataset else cfg.data.shard_url)
    extractor, clip = _eval_tools(cfg, device, run_dir)
    if loaded is None:
        loaded = load_weights(run_dir, device, cfg.eval.generator)
    ckpt = None
    if checkpoint is not None:  # {"generator", "ema", "step", "images"} of one checkpoint (eval_checkpoints.py)
        ckpt = checkpoint
        load_trainable_state_dict(loaded.generator, ckpt["ema" if loaded.which == "ema" else "generator"])
    if cfg.eval.protocol == "galip":
        captions = plan_captions_galip(split, cfg.eval.passes, cfg.eval.num, cfg.eval.batch_size, opts.seed)
    else:
        captions = plan_captions(split, cfg.eval.passes, cfg.eval.num, opts.seed)
    if dist.is_main():
        _warn_protocol(extractor, len(captions))
    starts = batch_starts(len(captions), cfg.eval.batch_size)
    mine = sum(len(captions[s : s + cfg.eval.batch_size]) for s in starts)
    with progress_bars(opts.progress and dist.is_main()) as bars:
        batches: Iterable[ImageBatch] = generate_batches(
            loaded, captions, cfg.eval.batch_size, opts.seed, device, starts, cfg.eval.protocol
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
        row = _row("run", run_dir.name, metrics, got, reference, split, cfg, opts, extractor, clip, device, started)
        row["generator"] = getattr(loaded, "which", cfg.eval.generator)
        if ckpt is not None:
            row.update({"checkpoint": ckpt["name"], "step": ckpt["step"], "images_seen": ckpt["images"]})
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
        row = _row("folder", str(Path(images_dir)), metrics, got, reference, split, cfg, opts, extractor, clip, device,
                   started)
        if opts.out_csv:
            append_csv(Path(opts.out_csv), row)
    return dist.broadcast_object(row)


def eval_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The command line's eval settings checked: --num or --passes (a pass count means eval.num 0)."""
    if settings.get("eval.num") is not None and settings.get("eval.passes") is not None:
        raise RatlipError("give --num or --passes, not both")
    if settings.get("eval.passes") is not None:
        settings = {**settings, "eval.num": 0}
    return settings


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
    # Inception activations are large, short-lived CPU tensors: without this glibc maps and
    # page-faults them in anew for every batch (docs/benchmarks.md, "Evaluation speed").
    tune_cpu_allocator(True)
    if (run is None) == (images is None):
        raise RatlipError("give either --run runs/NAME or --images DIR --captions FILE --dataset DIR")
    settings = eval_settings(settings)
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
