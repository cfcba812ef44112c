"""`ratlip ablate`: a sweep of one config key as one resumable command; by default the RAT
hidden-size sweep (the paper's Table II).

The swept key is ``--sweep KEY=V1,V2,...`` (any config key, e.g. ``train.lr_g=0.0001,0.0002`` or
``ecagan.carafe=true,false``); ``--hidden H1,H2`` is the shorthand for ``--sweep model.rat.hidden=...``.
For every (value, seed) of the grid values x ``--seeds`` one model is trained with the project's
`train()`, everything else equal (same config, data order, CLIP, noise and budget for a given seed),
then evaluated with `ratlip eval`'s code (`evaluate.evaluate_run`) and, on the shapes dataset, with
the shapes checker. The ablation folder holds::

    <out>/
      sweep.yaml       the sweep spec: every setting that makes rows comparable, and its hash
      ablation.csv     one row per (value, seed), rewritten atomically as each row arrives
      ablation.png     CS / FID / shapes match rate against the value (for h: log2 axis, h = 0 = RATLIP
                       without RAT), params on a 2nd axis
      h64-s0/ ...      the runs (a normal run directory each: config, checkpoints, export, eval.csv);
                       carafe-false-s0/ ... for other keys (last part of the key, value, seed)

Re-running the same command skips rows already in the CSV and resumes an interrupted training
from its newest checkpoint; a different setting (preset, --config, --set, budget, metrics, eval
protocol, swept key) is refused, because its rows would not be comparable. Only the value list
(--sweep/--hidden, --seeds), --shard and settings that cannot change a number (paths, device,
logging cadence) may change. ``--shard i/n`` takes every n-th cell of the grid (round robin), and ``--merge DIR...``
joins the CSVs of shards of one sweep.
"""

from __future__ import annotations

import copy
import csv
import datetime as _dt
import gc
import hashlib
import io
import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml
from rich.markup import escape
from rich.table import Table

from ratlip_cli import __version__
from ratlip_cli.config import Config, parse_override, resolve_config, set_value, to_dict, validate
from ratlip_cli.metrics.clip_score import RANDOM_CLIP_NOTE, clip_metrics_note
from ratlip_cli.console import console, warn
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import atomic_write, write_text
from ratlip_cli.models.params import PAPER_HIDDENS

SWEEP_FORMAT = "ratlip-ablate"
SWEEP_VERSION = 1
SWEEP_FILE = "sweep.yaml"
CSV_FILE = "ablation.csv"
PLOT_FILE = "ablation.png"
DEFAULT_PRESET = "shapes"
# Captions, noise, KID subsets and R-precision candidates of every evaluation (same for every row).
EVAL_SEED = 0

METRIC_NAMES = ("cs", "fid", "kid", "rp", "shapes")
DEFAULT_METRICS = ("cs", "fid", "kid", "rp")
# The default swept key (the paper's Table II) and the seed, swept by every ablation.
RAT_KEY = "model.rat.hidden"
SWEPT_KEYS = (RAT_KEY, "train.seed")
# Settings that cannot change a row's numbers: paths, device, logging cadence, batching of eval.
NEUTRAL_KEYS = frozenset(
    {
        "train.runs_dir",
        "train.name",
        "train.device",
        "train.log_every",
        "train.sample_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "data.num_workers",
        "clip.cache_dir",
        "eval.cache_dir",
        "eval.inception",
        "eval.batch_size",
    }
)

# sweep_key/value: the swept key and this row's value (old RAT-only CSVs lack them: h is the value);
# h is the row's RAT hidden size whatever the swept key.
KEY_COLUMNS = ["sweep_key", "value", "h", "seed"]
PARAM_COLUMNS = [
    "bridge_params",
    "rat_params",
    "generator_trainable",
    "generator_total",
    "discriminator_trainable",
    "discriminator_total",
    "head_params",
    "trainable_params",
    "total_params",
]
METRIC_COLUMNS = {
    "cs": ["clip_score"],
    "fid": ["fid"],
    "kid": ["kid_x1e3", "kid_std_x1e3"],
    "rp": ["r_precision"],
    "shapes": ["shapes_all", "shapes_colour", "shapes_shape", "shapes_background", "shapes_size"],
}
PROTOCOL_COLUMNS = ["generator", "feature_extractor", "eval_clip", "clip_metrics_note", "eval_images", "steps", "images", "device", "run", "sweep"]
# Columns that depend on wall-clock time or on when the row was made (left out when comparing rows).
TIMING_COLUMNS = ["train_s", "train_img_per_s", "eval_s", "wall_s", "time"]
SCORE_COLUMNS = [c for m in METRIC_NAMES for c in METRIC_COLUMNS[m]]
COLUMNS = KEY_COLUMNS + PARAM_COLUMNS + SCORE_COLUMNS + PROTOCOL_COLUMNS + TIMING_COLUMNS

NOT_FID_MARK = "random-tiny (NOT FID)"
_SHARD_SUFFIX = re.compile(r"-shard-\d+-of-\d+$")


# ----------------------------------------------------------------------------- options and parsing


@dataclass
class AblateOptions:
    """What `ratlip ablate` was asked for (the CLI only parses; everything is checked here)."""

    preset: str | None = None
    config: Path | None = None
    sets: list[str] = field(default_factory=list)
    hiddens: str | None = None
    sweep: str | None = None
    seeds: str = "0"
    steps: int | None = None
    epochs: int | None = None
    minutes: float | None = None
    metrics: str | None = None
    out: Path | None = None
    shard: str | None = None
    eval_num: int | None = None
    device: str | None = None
    feature_extractor: str | None = None
    progress: bool = True


def parse_int_list(text: str, option: str) -> list[int]:
    """'0,4,8' -> [0, 4, 8]: non-negative integers, no duplicates."""
    values: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise RatlipError(f"{option} expects comma-separated integers (e.g. 0,4,8), got '{text}'") from None
        if value < 0:
            raise RatlipError(f"{option} values must be >= 0, got {value}")
        if value in values:
            raise RatlipError(f"{option} lists {value} twice")
        values.append(value)
    if not values:
        raise RatlipError(f"{option} needs at least one value")
    return values


def parse_metrics(text: str | None) -> list[str]:
    """'cs,fid' -> ['cs', 'fid'] in canonical order; unknown names are an error."""
    if text is None:
        return list(DEFAULT_METRICS)
    names = [p.strip().lower() for p in str(text).split(",") if p.strip()]
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown:
        raise RatlipError(f"unknown metric '{unknown[0]}' in --metrics; choose from {', '.join(METRIC_NAMES)}")
    if not names:
        raise RatlipError(f"--metrics needs at least one of {', '.join(METRIC_NAMES)}")
    return [m for m in METRIC_NAMES if m in names]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'2/4' -> (2, 4): shard 2 of 4 (1-based)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise RatlipError(f"--shard expects i/n (e.g. 1/2), got '{text}'")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise RatlipError(f"--shard {text}: i must be between 1 and n")
    return i, n


@dataclass(frozen=True)
class Axis:
    """The swept config key and its values (as the text a --set would give)."""

    key: str
    values: tuple[str, ...]

    @property
    def is_rat(self) -> bool:
        return self.key == RAT_KEY


def parse_axis(opts: AblateOptions) -> Axis:
    """The sweep of `opts`: --sweep KEY=V1,V2 or --hidden H1,H2 (default: the paper's hidden sizes)."""
    if opts.sweep is not None and opts.hiddens is not None:
        raise RatlipError("give --sweep or --hidden, not both (--hidden H1,H2 is --sweep model.rat.hidden=H1,H2)")
    if opts.sweep is None:
        hiddens = parse_int_list(opts.hiddens if opts.hiddens is not None else ",".join(map(str, PAPER_HIDDENS)),
                                 "--hidden")
        return Axis(RAT_KEY, tuple(map(str, hiddens)))
    key, sep, text = str(opts.sweep).partition("=")
    key = key.strip()
    if not sep or not key:
        raise RatlipError(f"--sweep expects KEY=V1,V2,... (e.g. ecagan.carafe=true,false), got '{opts.sweep}'")
    if key == "train.seed":
        raise RatlipError("--sweep train.seed: seeds are swept by --seeds")
    if key in NEUTRAL_KEYS:
        raise RatlipError(f"--sweep {key}: this key cannot change a result (paths, device, logging); sweep another key")
    if key == RAT_KEY:
        return Axis(RAT_KEY, tuple(map(str, parse_int_list(text, "--sweep model.rat.hidden"))))
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise RatlipError(f"--sweep {key}= needs at least one value")
    twice = [v for k, v in enumerate(values) if v in values[:k]]
    if twice:
        raise RatlipError(f"--sweep {key} lists {twice[0]} twice")
    return Axis(key, tuple(values))


def grid(values: Sequence[Any], seeds: Sequence[int]) -> list[tuple[Any, int]]:
    """Every (value, seed) of the sweep, value-major in the order given."""
    return [(v, s) for v in values for s in seeds]


def shard_cells(cells: Sequence[tuple[Any, int]], shard: tuple[int, int] | None) -> list[tuple[Any, int]]:
    """Shard i of n takes cells i-1, i-1+n, i-1+2n, ... of the grid (round robin: balanced across values)."""
    if shard is None:
        return list(cells)
    i, n = shard
    return [c for k, c in enumerate(cells) if k % n == i - 1]


def run_name(value: Any, seed: int, key: str = RAT_KEY) -> str:
    """The run folder of one cell inside the ablation folder: h64-s0 for the RAT sweep, else
    <last part of the key>-<value>-s<seed> (e.g. carafe-false-s0)."""
    if key == RAT_KEY:
        return f"h{value}-s{seed}"
    slug = re.sub(r"[^A-Za-z0-9.]+", "_", str(value)).strip("_") or "empty"
    return f"{key.rsplit('.', 1)[-1]}-{slug}-s{seed}"


def row_axis(row: dict[str, Any]) -> tuple[str, str]:
    """(swept key, value) of a CSV row; rows of RAT-only CSVs (no sweep_key column) are h sweeps."""
    key = row.get("sweep_key") or RAT_KEY
    value = row.get("value")
    return key, str(value if value not in (None, "") else row["h"])


def row_key(row: dict[str, Any]) -> tuple[str, int]:
    """(value, seed): what identifies a row within one sweep."""
    return row_axis(row)[1], int(row["seed"])


def rows_key(rows: Sequence[dict[str, Any]]) -> str:
    """The swept key of an ablation's rows (RAT_KEY when there are none)."""
    keys = {row_axis(r)[0] for r in rows}
    if len(keys) > 1:
        raise RatlipError(f"the rows sweep several keys ({', '.join(sorted(keys))}); one ablation sweeps one key")
    return keys.pop() if keys else RAT_KEY


def _value_order(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


# ----------------------------------------------------------------------------- the sweep spec


def sweep_config(opts: AblateOptions, axis: Axis | None = None) -> Config:
    """The config shared by every row: preset < --config < --set < budget and eval options."""
    axis = axis or parse_axis(opts)
    sets = list(opts.sets or [])
    for text in sets:
        key, _ = parse_override(text)
        if key in (axis.key, "train.seed"):
            option = "--seeds" if key == "train.seed" else ("--hidden" if axis.is_rat else "--sweep")
            raise RatlipError(f"--set {key} is what the ablation sweeps; use {option} instead")
    given = (("--steps", opts.steps), ("--epochs", opts.epochs), ("--minutes", opts.minutes))
    budgets = [(n, v) for n, v in given if v is not None]
    if len(budgets) > 1:
        raise RatlipError(f"give one budget: {' or '.join(n for n, _ in budgets)}, not several")
    extra: list[str] = []
    if opts.steps is not None:
        if opts.steps < 1:
            raise RatlipError("--steps must be >= 1")
        extra += [f"train.max_steps={opts.steps}", "train.epochs=0", "train.max_minutes=0"]
    if opts.epochs is not None:
        if opts.epochs < 1:
            raise RatlipError("--epochs must be >= 1")
        extra += ["train.max_steps=0", f"train.epochs={opts.epochs}", "train.max_minutes=0"]
    if opts.minutes is not None:
        if not opts.minutes > 0:
            raise RatlipError("--minutes must be > 0")
        extra += ["train.max_steps=0", "train.epochs=0", f"train.max_minutes={opts.minutes}"]
    if opts.eval_num is not None:
        if opts.eval_num < 1:
            raise RatlipError("--eval-num must be >= 1")
        extra.append(f"eval.num={opts.eval_num}")
    if opts.feature_extractor is not None:
        extra.append(f"eval.feature_extractor={opts.feature_extractor}")
    if opts.device is not None:
        extra.append(f"train.device={opts.device}")
    cfg = resolve_config(opts.preset or DEFAULT_PRESET, opts.config, sets + extra)
    from ratlip_cli.models.registry import get_family

    if axis.is_rat and not get_family(cfg).has_rat:
        raise RatlipError(f"model.family={cfg.model.family} has no RAT to sweep; sweep one of its keys with "
                          "--sweep KEY=V1,V2 (e.g. --sweep dmgan.damsm_weight=1,5)")
    tc = cfg.train
    if tc.max_steps <= 0 and tc.epochs <= 0 and tc.max_minutes <= 0:
        raise RatlipError("the sweep has no training budget; give --steps N, --epochs N or --minutes M")
    return cfg


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def sweep_spec(cfg: Config, metrics: Sequence[str], key: str = RAT_KEY) -> dict[str, Any]:
    """Everything that makes two rows comparable: the config (minus swept and neutral keys), metrics,
    the evaluation seed and (for a key other than model.rat.hidden) the swept key, as flat dotted keys."""
    flat = _flatten(to_dict(cfg))
    swept = {key, "train.seed"}
    settings = {k: v for k, v in sorted(flat.items()) if k not in NEUTRAL_KEYS and k not in swept}
    spec: dict[str, Any] = {"metrics": list(metrics), "eval_seed": EVAL_SEED, "config": settings}
    if key != RAT_KEY:
        spec["sweep_key"] = key
    return spec


def spec_hash(spec: dict[str, Any]) -> str:
    """A stable short hash of a sweep spec."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def spec_differences(old: dict[str, Any], new: dict[str, Any], limit: int = 3) -> str:
    """'train.max_steps: 2 -> 3, metrics: [cs] -> [cs, fid]' (at most `limit` entries)."""
    a = {**_flatten(old.get("config", {})), "metrics": old.get("metrics"), "eval_seed": old.get("eval_seed"),
         "swept key": old.get("sweep_key", RAT_KEY)}
    b = {**_flatten(new.get("config", {})), "metrics": new.get("metrics"), "eval_seed": new.get("eval_seed"),
         "swept key": new.get("sweep_key", RAT_KEY)}
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    parts = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"+{len(keys) - limit} more")
    return ", ".join(parts) or "format"


def read_sweep(folder: Path) -> dict[str, Any] | None:
    """The parsed `sweep.yaml` of an ablation folder (None when there is none)."""
    path = folder / SWEEP_FILE
    if not path.is_file():
        return None
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        raise RatlipError(f"{path} is not readable YAML; delete it only if the folder holds no results") from None
    if not isinstance(doc, dict) or doc.get("format") != SWEEP_FORMAT or "spec_hash" not in doc:
        raise RatlipError(f"{path} is not a ratlip ablation spec")
    if int(doc.get("version", 0)) > SWEEP_VERSION:
        raise RatlipError(f"{path} was written by a newer ratlip (version {doc.get('version')}); upgrade ratlip")
    return doc


def write_sweep(folder: Path, spec: dict[str, Any], info: dict[str, Any]) -> None:
    """Write `sweep.yaml`: format, hash, informational fields (sweep lists, shard), then the spec."""
    doc = {"format": SWEEP_FORMAT, "version": SWEEP_VERSION, "spec_hash": spec_hash(spec), **info, "spec": spec}
    write_text(folder / SWEEP_FILE, yaml.safe_dump(doc, sort_keys=False))


# ----------------------------------------------------------------------------- rows (CSV)


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of an ablation.csv (strings), or [] when there is none."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [dict(r) for r in csv.DictReader(fh)]


def _sorted_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (_value_order(row_axis(r)[1]), int(r["seed"])))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.6g}" if abs(value) < 1e6 else str(round(value))
    return str(value)


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Rewrite ablation.csv atomically, rows sorted by (value, seed), with the fixed columns."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, restval="", extrasaction="ignore")
    writer.writeheader()
    for row in _sorted_rows(rows):
        writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
    write_text(path, buf.getvalue())


def _num(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


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
    from ratlip_cli.data import load_prepared
    from ratlip_cli.evaluate import resolve_device
    from ratlip_cli.export import load_generator, noise_dim
    from ratlip_cli.train.shapes_eval import score_generator_on_shapes, shapes_eval_captions

    dev = resolve_device(device)
    loaded = load_generator(run_dir, dev, cfg.eval.generator)
    captions = shapes_eval_captions(load_prepared(cfg.data.root), "test", cfg.eval.num)
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

        row = evaluate_run(run_dir, {}, EvalOptions(device=device, seed=EVAL_SEED, progress=progress))
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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def cell_config(cfg: Config, out: Path, value: Any, seed: int, key: str = RAT_KEY) -> Config:
    """The config of one cell: the sweep's, with the swept key, seed and run folder set (and validated)."""
    c = copy.deepcopy(cfg)
    c.train.seed = int(seed)
    c.train.runs_dir = str(out)
    c.train.name = run_name(value, seed, key)
    try:
        _, typed = parse_override(f"{key}={value}")
        set_value(c, key, typed)
        validate(c)
    except RatlipError as exc:
        raise RatlipError(f"--sweep {key}={value}: {exc}") from None
    return c


# ----------------------------------------------------------------------------- summary, table, plot


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per swept value: the value (and h for the RAT sweep), seeds, and (mean, std) of every
    numeric column across seeds (std None for one seed)."""
    import numpy as np

    rat = rows_key(rows) == RAT_KEY
    by_value: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_value.setdefault(row_axis(r)[1], []).append(r)
    out = []
    for value in sorted(by_value, key=_value_order):
        group = by_value[value]
        entry: dict[str, Any] = {"value": value, "h": int(value) if rat else None,
                                 "seeds": sorted(int(r["seed"]) for r in group)}
        for col in PARAM_COLUMNS + SCORE_COLUMNS + ["train_img_per_s", "train_s", "steps"]:
            vals = [v for v in (_num(r.get(col)) for r in group) if v is not None]
            if not vals:
                entry[col] = (None, None)
                continue
            arr = np.asarray(vals, dtype=np.float64)
            entry[col] = (float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else None)
        marks = {str(r.get("feature_extractor", "")) for r in group}
        entry["not_fid"] = NOT_FID_MARK in marks
        entry["clip_note"] = next((n for n in (clip_metrics_note(str(r.get("eval_clip", ""))) for r in group) if n), "")
        out.append(entry)
    return out


def _fmt(pair: tuple[float | None, float | None], spec: str) -> str:
    mean, std = pair
    if mean is None:
        return "-"
    text = format(mean, spec)
    return f"{text} ± {format(std, spec)}" if std is not None else text


def _h_label(h: int) -> str:
    return "0 (RATLIP without RAT)" if h == 0 else str(h)


def metrics_in(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The metrics that have values in any row."""
    return [m for m in METRIC_NAMES if any(_num(r.get(METRIC_COLUMNS[m][0])) is not None for r in rows)]


def results_table(rows: Sequence[dict[str, Any]], metrics: Sequence[str], title: str) -> Table:
    """The Rich table of an ablation: one line per swept value, mean ± std across seeds."""
    summary = summarize(rows)
    key = rows_key(rows)
    not_fid = any(e["not_fid"] for e in summary)
    clip_note = next((e["clip_note"] for e in summary if e["clip_note"]), "")
    clip_mark = ""
    if clip_note:
        clip_mark = " [red](random CLIP: meaningless)[/red]" if clip_note == RANDOM_CLIP_NOTE else f" [yellow]({escape(clip_note.split(':')[0])})[/yellow]"
    table = Table(title=escape(title), show_header=True)
    cols: list[tuple[str, str, str]] = [
        ("rat_params", "RAT LSTM", ",.0f"),
        ("generator_trainable", "G trainable", ",.0f"),
        ("trainable_params", "trainable (G+D+head)", ",.0f"),
        ("total_params", "total (with CLIP)", ",.0f"),
    ]
    if "cs" in metrics:
        cols.append(("clip_score", f"CS{clip_mark}", ".2f"))
    if "fid" in metrics:
        cols.append(("fid", "FID [red](random-tiny, NOT FID)[/red]" if not_fid else "FID", ".3f"))
    if "kid" in metrics:
        cols.append(("kid_x1e3", "KID x1e3 [red](NOT KID)[/red]" if not_fid else "KID x1e3", ".3f"))
    if "rp" in metrics:
        cols.append(("r_precision", f"R-prec %{clip_mark}", ".2f"))
    if "shapes" in metrics:
        cols += [
            ("shapes_all", "shapes all", ".3f"),
            ("shapes_colour", "colour", ".3f"),
            ("shapes_shape", "shape", ".3f"),
            ("shapes_background", "bg", ".3f"),
        ]
    cols += [("steps", "steps", ".0f"), ("train_img_per_s", "img/s", ".1f"), ("train_s", "train s", ".0f")]
    table.add_column("h" if key == RAT_KEY else key, justify="right", style="bold")
    table.add_column("seeds", justify="right")
    for _, title_, _ in cols:
        table.add_column(title_, justify="right")
    for e in summary:
        seeds = ",".join(map(str, e["seeds"]))
        label = _h_label(e["h"]) if key == RAT_KEY else e["value"]
        table.add_row(escape(label), seeds, *(_fmt(e[k], spec) for k, _, spec in cols))
    return table


def _x_positions(hs: Sequence[int]) -> dict[int, float]:
    """log2(h) for h > 0; h = 0 (RATLIP without RAT) one and a half octaves left of the smallest h."""
    positive = [h for h in hs if h > 0]
    left = (math.log2(min(positive)) - 1.5) if positive else 0.0
    return {h: (math.log2(h) if h > 0 else left) for h in hs}


def _value_positions(values: Sequence[str]) -> dict[str, float]:
    """x of each swept value: the number itself when every value is a number, else its rank."""
    try:
        return {v: float(v) for v in values}
    except ValueError:
        return {v: float(k) for k, v in enumerate(values)}


def plot_ablation(rows: Sequence[dict[str, Any]], metrics: Sequence[str], path: Path, title: str = "") -> None:
    """ablation.png: one panel per plotted metric (CS, FID, shapes all-match) against the swept value
    (for h: a log2 axis, h = 0 marked as RATLIP without RAT), trainable parameters (dashed) on a second
    axis. Written atomically."""
    if rows_key(rows) != RAT_KEY:
        _plot_values(rows, metrics, path, title)
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    summary = summarize(rows)
    if not summary:
        return
    panels = _metric_panels(metrics, summary)
    hs = [e["h"] for e in summary]
    xs = _x_positions(hs)
    fig = Figure(figsize=(7.5, 3.0 * len(panels) + 0.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    params = [e["trainable_params"][0] for e in summary]
    for ax, (col, label) in zip(axes, panels):
        if col is not None:
            # RAT (h > 0) as a line on the log2 axis; h = 0 (no RAT) as a separate star left of the break.
            pts = [(xs[e["h"]], e[col][0], e[col][1] or 0.0) for e in summary if e["h"] > 0 and e[col][0] is not None]
            if pts:
                x, y, err = zip(*pts)
                ax.errorbar(x, y, yerr=err, marker="o", color="tab:blue", capsize=3)
            galip = [(e[col][0], e[col][1] or 0.0) for e in summary if e["h"] == 0 and e[col][0] is not None]
            if galip:
                ax.errorbar([xs[0]], [galip[0][0]], yerr=[galip[0][1]], marker="*", markersize=14, color="tab:red",
                            capsize=3, linestyle="none")
            ax.set_ylabel(label.split(",")[0], color="tab:blue")
            ax.set_title(label, fontsize=9)
            ax.grid(True, alpha=0.3)
        if all(p is not None for p in params):
            twin = ax.twinx() if col is not None else ax
            rat = [(xs[h], p) for h, p in zip(hs, params) if h > 0]
            if rat:
                twin.plot(*zip(*rat), linestyle="--", marker=".", color="gray")
            if 0 in xs:
                twin.plot([xs[0]], [params[hs.index(0)]], marker="D", markersize=4, color="gray", linestyle="none")
            twin.set_ylabel("trainable parameters", color="gray")
            twin.ticklabel_format(axis="y", style="plain", useOffset=False)
        if 0 in xs and len(xs) > 1:
            ax.axvline(xs[0] + 0.75, color="black", linewidth=0.6, linestyle=":")
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color="tab:blue", marker="o", label="RAT, mean ± std over seeds"),
        Line2D([], [], color="tab:red", marker="*", markersize=10, linestyle="none", label="RATLIP without RAT (h=0)"),
        Line2D([], [], color="gray", marker=".", linestyle="--", label="trainable parameters (right axis)"),
    ]
    axes[0].legend(handles=handles if panels[0][0] is not None else handles[2:], fontsize=7, loc="best")
    axes[-1].set_xticks([xs[h] for h in hs])
    axes[-1].set_xticklabels(["no RAT\n(h=0)" if h == 0 else str(h) for h in hs])
    axes[-1].set_xlabel("RAT hidden size h (log2 axis)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png"))


def _metric_panels(metrics: Sequence[str], summary: Sequence[dict[str, Any]]) -> list[tuple[str | None, str]]:
    """(column, title) of each plot panel; NOT FID and the evaluation CLIP's caveat in the titles."""
    not_fid = any(e["not_fid"] for e in summary)
    clip_note = next((e["clip_note"] for e in summary if e["clip_note"]), "")
    panels: list[tuple[str | None, str]] = []
    if "cs" in metrics:
        panels.append(("clip_score", f"CLIP score (x100) - {clip_note}" if clip_note else "CLIP score (x100), higher is better"))
    if "fid" in metrics:
        panels.append(("fid", "random-tiny features: NOT FID" if not_fid else "FID (clean-fid), lower is better"))
    if "shapes" in metrics:
        panels.append(("shapes_all", "shapes: all-match rate, higher is better"))
    return panels or [(None, "parameters")]


def _plot_values(rows: Sequence[dict[str, Any]], metrics: Sequence[str], path: Path, title: str) -> None:
    """The plot of a sweep of any key other than the RAT hidden size: points (mean ± std over seeds)
    at each value, joined when the values are numbers; trainable parameters on a second axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    summary = summarize(rows)
    if not summary:
        return
    key = rows_key(rows)
    panels = _metric_panels(metrics, summary)
    values = [e["value"] for e in summary]
    xs = _value_positions(values)
    numeric = all(_value_order(v)[0] == 0 for v in values)
    fig = Figure(figsize=(7.5, 3.0 * len(panels) + 0.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    params = [e["trainable_params"][0] for e in summary]
    for ax, (col, label) in zip(axes, panels):
        if col is not None:
            pts = [(xs[e["value"]], e[col][0], e[col][1] or 0.0) for e in summary if e[col][0] is not None]
            if pts:
                x, y, err = zip(*pts)
                ax.errorbar(x, y, yerr=err, marker="o", color="tab:blue", capsize=3,
                            linestyle="-" if numeric else "none")
            ax.set_ylabel(label.split(",")[0], color="tab:blue")
            ax.set_title(label, fontsize=9)
            ax.grid(True, alpha=0.3)
        known = [(xs[v], p) for v, p in zip(values, params) if p is not None]
        if known:
            twin = ax.twinx() if col is not None else ax
            twin.plot(*zip(*known), linestyle="--" if numeric else "none", marker=".", color="gray")
            twin.set_ylabel("trainable parameters", color="gray")
            twin.ticklabel_format(axis="y", style="plain", useOffset=False)
    axes[-1].set_xticks([xs[v] for v in values])
    axes[-1].set_xticklabels(values)
    axes[-1].set_xlabel(key)
    if not numeric:
        axes[-1].set_xlim(-0.5, len(values) - 0.5)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png"))


def print_table(table: Table) -> None:
    """Print a wide table without cutting numbers: into a file or pipe at its natural width."""
    from rich.measure import Measurement

    width = console.width
    if not console.is_terminal:
        width = max(width, Measurement.get(console, console.options.update(width=10_000), table).maximum)
    for column in table.columns:
        column.overflow = "fold"
    before = console.width
    console.width = width  # Console.print(width=...) cannot exceed the console's own width
    try:
        console.print(table)
    finally:
        console.width = before


def _publish(out: Path, rows: Sequence[dict[str, Any]], metrics: Sequence[str], title: str) -> None:
    write_rows(out / CSV_FILE, rows)
    plot_ablation(rows, metrics, out / PLOT_FILE, title)


# ----------------------------------------------------------------------------- commands


def _default_out(cfg: Config, shard: tuple[int, int] | None) -> Path:
    name = f"ablate-{cfg.preset or 'custom'}"
    if shard is not None and shard[1] > 1:
        name += f"-shard-{shard[0]}-of-{shard[1]}"
    return Path(cfg.train.runs_dir) / name


def log_hparams(run_dir: Path, cfg: Config, row: dict[str, Any]) -> None:
    """The cell's swept settings and final metrics in its TensorBoard folder, for the HParams view
    (`tensorboard --logdir runs/ablate-PRESET` lists every cell)."""
    from ratlip_cli.train.tensorboard import RunBoard

    settings = {str(row["sweep_key"]): row["value"], "h": int(row["h"]), "seed": int(row["seed"]),
                "family": cfg.model.family, "preset": cfg.preset or "", "steps": int(row["steps"])}
    board = RunBoard(run_dir)
    board.hparams(settings, {k: row.get(k) for k in SCORE_COLUMNS + ["trainable_params"]})
    board.close()


def _check_dataset_metrics(cfg: Config, metrics: Sequence[str]) -> None:
    if "shapes" in metrics and cfg.data.name != "shapes":
        raise RatlipError(f"--metrics shapes needs the shapes dataset (data.name is '{cfg.data.name}')")


def run_ablation(opts: AblateOptions) -> int:
    """`ratlip ablate PRESET ...`: train and evaluate every cell of this shard not yet in the CSV.

    Returns the exit code (0, or 128 + signal number when a training was stopped by a signal).
    """
    axis = parse_axis(opts)
    seeds = parse_int_list(opts.seeds, "--seeds")
    metrics = parse_metrics(opts.metrics)
    shard = parse_shard(opts.shard)
    cfg = sweep_config(opts, axis)
    _check_dataset_metrics(cfg, metrics)
    out = Path(opts.out) if opts.out else _default_out(cfg, shard)
    for value in axis.values:  # every value must make a valid config before anything trains
        cell_config(cfg, out, value, seeds[0], axis.key)
    spec = sweep_spec(cfg, metrics, axis.key)
    digest = spec_hash(spec)

    old = read_sweep(out)
    if old is not None and old["spec_hash"] != digest:
        raise RatlipError(
            f"{out} holds a sweep made with other settings ({spec_differences(old.get('spec', {}), spec)}); "
            "re-run with the original settings or choose another --out"
        )
    rows = read_rows(out / CSV_FILE)
    foreign = {r.get("sweep") for r in rows} - {digest}
    if foreign:
        other = ", ".join(sorted(map(str, foreign)))
        raise RatlipError(f"{out / CSV_FILE} holds rows of another sweep ({other}); choose another --out")
    info: dict[str, Any] = {"sweep_key": axis.key} if not axis.is_rat else {}
    if axis.is_rat:
        info["hidden"] = sorted(set(map(int, axis.values)) | set(old.get("hidden", []) if old else []))
    else:
        earlier = [str(v) for v in (old.get("values", []) if old else [])]
        info["values"] = earlier + [v for v in axis.values if v not in earlier]
    info.update({
        "seeds": sorted(set(seeds) | set(old.get("seeds", []) if old else [])),
        "shard": f"{shard[0]}/{shard[1]}" if shard else None,
        "preset": cfg.preset,
        "ratlip": __version__,
    })
    write_sweep(out, spec, info)

    done = {row_key(r) for r in rows}
    cells = shard_cells(grid(axis.values, seeds), shard)
    todo = [c for c in cells if c not in done]
    where = f", shard {shard[0]}/{shard[1]}" if shard else ""
    name = "h" if axis.is_rat else axis.key
    n_values = len(axis.values)
    console.print(
        f"ablation {out}: {n_values} {name} x {len(seeds)} seeds = {n_values * len(seeds)} runs{where}: "
        f"{len(cells)} here, {len(cells) - len(todo)} done, {len(todo)} to train",
        highlight=False,
        soft_wrap=True,
    )
    title = f"ratlip ablate {cfg.preset or ''} ({out.name})".strip()
    code = 0
    for k, (value, seed) in enumerate(todo, start=1):
        started = time.time()
        c = cell_config(cfg, out, value, seed, axis.key)
        run = run_name(value, seed, axis.key)
        console.rule(f"[{k}/{len(todo)}] {name}={value} seed={seed}", style="dim")
        trained = train_run(c, out / run)
        if trained.stopped_by in ("SIGINT", "SIGTERM"):
            import signal

            console.print(
                f"interrupted; re-run the same command to resume {name}={value} seed={seed} from its checkpoint",
                highlight=False,
            )
            code = 128 + int(getattr(signal, trained.stopped_by))
            break
        scores = evaluate_cell(trained.run_dir, c, metrics, opts.device, opts.progress)
        row: dict[str, Any] = {
            "sweep_key": axis.key,
            "value": value,
            "h": c.model.rat.hidden,
            "seed": seed,
            **trained.params,
            **scores,
            "steps": trained.steps,
            "images": trained.images,
            "device": trained.device,
            "run": run,
            "sweep": digest,
            "train_s": round(trained.seconds, 1),
            "train_img_per_s": round(trained.images / trained.seconds, 2) if trained.seconds > 0 else "",
            "wall_s": round(time.time() - started, 1),
            "time": _now(),
        }
        rows = [r for r in rows if row_key(r) != (value, seed)] + [row]
        _publish(out, rows, metrics, title)
        log_hparams(out / run, c, row)
    if rows:
        if not todo:
            plot_ablation(rows, metrics, out / PLOT_FILE, title)
        print_table(results_table(rows, metrics, title))
        console.print(f"wrote {out / CSV_FILE} and {out / PLOT_FILE}", highlight=False)
    return code


def merge_ablations(dirs: Sequence[Path], out: Path | None = None) -> Path:
    """`ratlip ablate --merge DIR...`: join the CSVs of shards of one sweep into `out`."""
    if not dirs:
        raise RatlipError("--merge needs the ablation folders to join, e.g. ratlip ablate --merge runs/a-1 runs/a-2")
    docs = []
    for d in dirs:
        doc = read_sweep(Path(d))
        if doc is None:
            raise RatlipError(f"{d} is not an ablation folder (no {SWEEP_FILE})")
        docs.append(doc)
    first = docs[0]
    for d, doc in zip(dirs[1:], docs[1:]):
        if doc["spec_hash"] != first["spec_hash"]:
            raise RatlipError(
                f"cannot merge {d} with {dirs[0]}: their sweeps differ "
                f"({spec_differences(first.get('spec', {}), doc.get('spec', {}))})"
            )
    if out is None:
        base = Path(dirs[0])
        name = _SHARD_SUFFIX.sub("", base.name)
        if name in {Path(d).name for d in dirs}:
            name += "-merged"
        out = base.parent / name
    existing = read_sweep(Path(out))
    if existing is not None and existing["spec_hash"] != first["spec_hash"]:
        raise RatlipError(f"{out} holds another sweep; choose another --out")
    merged: dict[tuple[str, int], dict[str, str]] = {}
    for d in dirs:
        for r in read_rows(Path(d) / CSV_FILE):
            if r.get("sweep") != first["spec_hash"]:
                raise RatlipError(f"{Path(d) / CSV_FILE} holds rows of another sweep ({r.get('sweep')})")
            key = row_key(r)
            if key in merged:
                name = "h" if row_axis(r)[0] == RAT_KEY else row_axis(r)[0]
                warn(f"{name}={key[0]} seed={key[1]} is in several folders; keeping the first "
                     f"({merged[key].get('run')})")
                continue
            merged[key] = r
    rows = _sorted_rows(merged.values())
    for col in ("feature_extractor", "eval_clip"):
        values = {r.get(col, "") for r in rows} - {""}
        if len(values) > 1:
            raise RatlipError(f"cannot merge: rows were scored with different {col} ({', '.join(sorted(values))})")
    spec = first.get("spec", {})
    metrics = list(spec.get("metrics") or metrics_in(rows))
    info: dict[str, Any] = {}
    if first.get("sweep_key"):
        info["sweep_key"] = first["sweep_key"]
        info["values"] = list(dict.fromkeys(str(v) for doc in docs for v in doc.get("values", [])))
    else:
        info["hidden"] = sorted({h for doc in docs for h in doc.get("hidden", [])})
    info.update({
        "seeds": sorted({s for doc in docs for s in doc.get("seeds", [])}),
        "shard": None,
        "preset": first.get("preset"),
        "merged_from": [str(d) for d in dirs],
        "ratlip": __version__,
    })
    Path(out).mkdir(parents=True, exist_ok=True)
    write_sweep(Path(out), spec, info)
    title = f"ratlip ablate {first.get('preset') or ''} ({Path(out).name}, merged)".replace("  ", " ")
    _publish(Path(out), rows, metrics, title)
    print_table(results_table(rows, metrics, title))
    console.print(
        f"merged {len(rows)} rows from {len(dirs)} folders into {Path(out) / CSV_FILE} and {Path(out) / PLOT_FILE}",
        highlight=False,
    )
    return Path(out)


def params_only(opts: AblateOptions) -> list[dict[str, int]]:
    """`ratlip ablate PRESET --params-only`: the parameter column of Table II, no training, no data.

    CLIP is built with random weights: the counts do not depend on them.
    """
    from ratlip_cli.models.params import param_table
    from ratlip_cli.weights import load_clip

    if opts.sweep is not None:
        raise RatlipError("--params-only counts the RAT sweep's parameters per h; give --hidden, not --sweep")
    hiddens = [int(v) for v in parse_axis(opts).values]
    for text in opts.sets or []:
        key, _ = parse_override(text)
        if key == "model.rat.hidden":
            raise RatlipError("--set model.rat.hidden is what the ablation sweeps; use --hidden instead")
    cfg = resolve_config(opts.preset or DEFAULT_PRESET, opts.config, [*(opts.sets or []), "clip.weights=random"])
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip's "no pretrained weights loaded": random weights are intended
    try:
        clip_model, _ = load_clip(cfg.clip.arch, "random", cfg.clip.cache_dir)
    finally:
        logging.disable(previous)
    rows = param_table(cfg, clip_model, hiddens, with_release=True)
    m = cfg.model
    table = Table(
        title=f"parameters of preset {cfg.preset or 'custom'} (model.family={m.family}, clip.arch={cfg.clip.arch}, "
        f"{m.image_size} px, ngf {m.ngf}, rat.mode={m.rat.mode}, rat.scope={m.rat.scope}, D {m.d_backbone})",
        show_header=True,
    )
    columns = [
        ("h", "h"),
        ("generator", f"G ours ({m.rat.mode})"),
        ("authors_generator", "G ours (authors mode)"),
        ("release_generator", "G release code"),
        ("rat", "of which RAT LSTM (ours)"),
        ("discriminator", "D ours"),
        ("release_discriminator", "D release (used)"),
        ("head", "head ours"),
        ("release_head", "head release"),
        ("trainable", "trainable ours (G+D+head)"),
        ("frozen", "frozen CLIP"),
    ]
    for key, title in columns:
        table.add_column(title, justify="right", style="bold" if key == "h" else None)

    def cell(r: dict, key: str) -> str:
        if key == "h":
            return _h_label(r[key])
        if key == "release_discriminator":
            return f"{r[key]:,} ({r['release_discriminator_used']:,})"
        return "-" if r.get(key) is None else f"{r[key]:,}"

    for r in rows:
        table.add_row(*(cell(r, key) for key, _ in columns))
    print_table(table)
    console.print(
        "trainable parameters (CLIP frozen; its weights do not change the counts). 'release code': the "
        "authors' networks (GALIP's code for h = 0 with model.family=galip, RATLIP's Affine_rnn code for h > 0), "
        "counted by tools/make_reference_fixtures.py at the cub configuration (256 px, ngf 64) and stored in "
        "ratlip_cli/models/release_params.json; '-' = no released network. The release's D builds two 1x1 "
        "shortcuts it never uses; ours does not ('used' counts only parameters that get a gradient).",
        style="dim",
        highlight=False,
    )
    return rows


def run_ablate_command(opts: AblateOptions, merge: Sequence[Path] | None = None, only_params: bool = False) -> int:
    """What `ratlip ablate` does with its options; returns the exit code."""
    if merge is not None:
        if only_params:
            raise RatlipError("--params-only and --merge do not go together")
        merge_ablations(list(merge), opts.out)
        return 0
    if only_params:
        params_only(opts)
        return 0
    return run_ablation(opts)
