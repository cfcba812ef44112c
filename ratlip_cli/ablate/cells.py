"""One cell of the sweep: train its run with `train()`, evaluate it, make its row."""

from __future__ import annotations

import copy
import gc
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


from ratlip_cli.config import Config, apply_family_settings, parse_override, set_value, validate
from ratlip_cli.errors import RatlipError
from ratlip_cli.ablate.options import (
    EVAL_SEED,
    RAT_KEY,
    run_name,
    split_cell,
)


# ----------------------------------------------------------------------------- one row


@dataclass
class TrainedRun:
    """What training one cell produced (parameter counts of the exact trained models)."""

    run_dir: Path
    stopped_by: str
    steps: int
    images: int
    seconds: float
    params: dict[str, int]
    device: str


def _param_columns(counts: dict[str, dict[str, int]]) -> dict[str, int | None]:
    """The CSV's parameter columns; a part the family does not have (bridge, RAT: RATLIP's) is None."""

    def count(part: str, kind: str) -> int | None:
        return counts[part][kind] if part in counts else None

    return {
        "bridge_params": count("bridge", "trainable"),
        "rat_params": count("rat", "trainable"),
        "sa_params": count("shuffle_attention", "trainable"),
        "generator_trainable": count("generator", "trainable"),
        "generator_total": count("generator", "total"),
        "discriminator_trainable": count("discriminator", "trainable"),
        "discriminator_total": count("discriminator", "total"),
        "head_params": count("head", "trainable"),
        "trainable_params": count("total", "trainable"),
        "total_params": count("total", "total"),
    }


def train_run(cfg: Config, run_dir: Path) -> TrainedRun:
    """Train one cell into `run_dir` with `ratlip train`'s public `train()`, resuming from its newest checkpoint.

    A finished run is not trained again (`train` reports "nothing to do" and re-exports); a run
    that died before its first checkpoint is started afresh.
    """
    from ratlip_cli.models.registry import get_family
    from ratlip_cli.train import train
    from ratlip_cli.train.checkpoint import list_checkpoints

    resume = run_dir if list_checkpoints(run_dir / "checkpoints") else None
    if resume is None and run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted start with nothing to resume from
    result = train(cfg, resume=resume)
    done = TrainedRun(
        run_dir=Path(result.run_dir),
        stopped_by=result.stopped_by,
        steps=int(result.step),
        images=int(result.images),
        seconds=float(result.elapsed_s),
        params=_param_columns(get_family(cfg).param_counts(result.nets)),
        device=result.device,
    )
    del result
    gc.collect()
    return done


def _shapes_scores(run_dir: Path, cfg: Config, device: str | None) -> dict[str, Any]:
    """The shapes checker's match rates of the run's exported generator (`eval.generator`) on test captions."""
    from ratlip_cli.data.shards import open_dataset
    from ratlip_cli.evaluate import resolve_device
    from ratlip_cli.export import load_generator, noise_dim
    from ratlip_cli.train.shapes_eval import score_generator_on_shapes, shapes_eval_captions

    dev = resolve_device(device)
    loaded = load_generator(run_dir, dev, cfg.eval.generator)
    captions = shapes_eval_captions(open_dataset(cfg.data.root, cfg.data.format, cfg.data.shard_url), "test", cfg.eval.num)
    res = score_generator_on_shapes(
        loaded.generator, loaded.embed, captions, noise_dim(loaded),
        device=dev, seed=EVAL_SEED, batch_size=max(1, cfg.eval.batch_size), distributed=False,
    )
    scores = {f"shapes_{k}": res[k] for k in ("all", "colour", "shape", "background", "size")}
    return {**scores, "shapes_n": res["n"], "generator": loaded.which}


def evaluate_cell(
    run_dir: Path, cfg: Config, metrics: Sequence[str], device: str | None, progress: bool
) -> dict[str, Any]:
    """The metric columns of one trained run: `ratlip eval`'s numbers and/or the shapes checker's."""
    out: dict[str, Any] = {}
    started = time.time()
    if set(metrics) & {"cs", "fid", "kid", "rp"}:
        from ratlip_cli.evaluate import EvalOptions, evaluate_run

        # ablation.csv has no protocol column: its numbers are always the clean-fid protocol's
        plain = {"eval.protocol": "clean-fid", "eval.metrics": "", "eval.ref_stats": ""}
        row = evaluate_run(run_dir, plain, EvalOptions(device=device, seed=EVAL_SEED, progress=progress))
        picked = {
            "cs": {"clip_score": row["clip_score"]},
            "fid": {"fid": row["fid"]},
            "kid": {"kid_x1e3": row["kid_x1e3"], "kid_std_x1e3": row["kid_std_x1e3"]},
            "rp": {"r_precision": row["r_precision"]},
        }
        for m in metrics:
            out.update(picked.get(m, {}))
        if set(metrics) & {"fid", "kid"}:
            out["feature_extractor"] = row["feature_extractor"]
        out["eval_clip"] = row["eval_clip"] if set(metrics) & {"cs", "rp"} else ""
        out["clip_metrics_note"] = row["clip_metrics_note"] if set(metrics) & {"cs", "rp"} else ""
        out["eval_images"] = row["num_images"]
        out["generator"] = row["generator"]
    if "shapes" in metrics:
        scores = _shapes_scores(run_dir, cfg, device)
        out.update({k: v for k, v in scores.items() if k != "shapes_n"})
        out.setdefault("eval_images", scores["shapes_n"])
    out["eval_s"] = round(time.time() - started, 1)
    return out


def cell_config(cfg: Config, out: Path, value: Any, seed: int, key: str = RAT_KEY) -> Config:
    """The config of one cell: the sweep's, with the swept key, shuffle attention (a value made by
    `cell_value`), seed and run folder set (and validated)."""
    from ratlip_cli.models.registry import get_family

    c = copy.deepcopy(cfg)
    c.train.seed = int(seed)
    base, sa = split_cell(value)
    try:
        _, typed = parse_override(f"{key}={base}")
        set_value(c, key, typed)
        if key == "model.family":  # e.g. GALIP's cells get model.rat.hidden = 0 (config.yaml records it)
            apply_family_settings(c)
        c.model.shuffle_attention = sa
        if not sa and c.model.family != "ratlip":
            raise RatlipError(f"model.family={c.model.family} has no shuffle attention to switch off "
                              "(--shuffle-attention false is for family ratlip)")
        get_family(c.model.family).pin_paths(c)  # e.g. DM-GAN's encoders under the sweep's own runs_dir
        c.train.runs_dir = str(out)
        c.train.name = run_name(value, seed, key)
        validate(c)
    except RatlipError as exc:
        raise RatlipError(f"--sweep {key}={base}{'' if sa else ' --shuffle-attention false'}: {exc}") from None
    return c
