"""The sweep spec (sweep.yaml and its hash) and the rows of ablation.csv."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from ratlip_cli.config import Config, parse_override, resolve_config, to_dict
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import write_text
from ratlip_cli.ablate.options import (
    SWEEP_FORMAT,
    SWEEP_VERSION,
    SWEEP_FILE,
    DEFAULT_PRESET,
    EVAL_SEED,
    RAT_KEY,
    SA_KEY,
    NEUTRAL_KEYS,
    GRADCAM_KEYS,
    COLUMNS,
    AblateOptions,
    Axis,
    parse_axis,
    row_axis,
    _value_order,
)


# ----------------------------------------------------------------------------- the sweep spec


def sweep_config(opts: AblateOptions, axis: Axis | None = None) -> Config:
    """The config shared by every row: preset < --config < --set < budget and eval options."""
    axis = axis or parse_axis(opts)
    sets = list(opts.sets or [])
    for text in sets:
        key, _ = parse_override(text)
        if key in (axis.key, "train.seed", SA_KEY):
            option = {"train.seed": "--seeds", SA_KEY: "--shuffle-attention"}.get(
                key, "--hidden" if axis.is_rat else "--sweep")
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
    the evaluation seed and (for a key other than model.rat.hidden) the swept key, as flat dotted keys.
    model.shuffle_attention is a cell setting (`--shuffle-attention`) and the Grad-CAM keys are
    recorded per row, so neither is part of the spec."""
    flat = _flatten(to_dict(cfg))
    swept = {key, "train.seed", SA_KEY} | GRADCAM_KEYS
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
