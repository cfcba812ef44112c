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

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from rich.table import Table

from ratlip_cli import __version__
from ratlip_cli.config import Config, parse_override, resolve_config
from ratlip_cli.console import console, warn
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import utc_timestamp
from ratlip_cli.models.ratlip.params import PAPER_HIDDENS  # noqa: F401 (ablate.PAPER_HIDDENS)
from ratlip_cli.options import parse_int_list
from ratlip_cli.ablate.options import (  # noqa: F401
    SWEEP_FORMAT,
    SWEEP_VERSION,
    SWEEP_FILE,
    CSV_FILE,
    PLOT_FILE,
    DEFAULT_PRESET,
    EVAL_SEED,
    METRIC_NAMES,
    DEFAULT_METRICS,
    RAT_KEY,
    SA_KEY,
    SA_OFF_SUFFIX,
    GRADCAM_COLUMNS,
    SWEPT_KEYS,
    NEUTRAL_KEYS,
    KEY_COLUMNS,
    PARAM_COLUMNS,
    METRIC_COLUMNS,
    PROTOCOL_COLUMNS,
    TIMING_COLUMNS,
    SCORE_COLUMNS,
    COLUMNS,
    NOT_FID_MARK,
    _SHARD_SUFFIX,
    AblateOptions,
    parse_metrics,
    parse_shard,
    parse_shuffle_attention,
    cell_value,
    split_cell,
    Axis,
    parse_axis,
    grid,
    shard_cells,
    run_name,
    row_axis,
    row_key,
    rows_key,
)
from ratlip_cli.ablate.sweep import (  # noqa: F401
    sweep_config,
    sweep_spec,
    spec_hash,
    spec_differences,
    read_sweep,
    write_sweep,
    read_rows,
    _sorted_rows,
    write_rows,
)
from ratlip_cli.ablate.cells import (  # noqa: F401
    _param_columns,
    TrainedRun,
    train_run,
    evaluate_cell,
    cell_config,
)
from ratlip_cli.ablate.gradcam import add_gradcam, GRADCAM_FIGURE  # noqa: F401
from ratlip_cli.ablate.summary import (  # noqa: F401
    summarize,
    _h_label,
    metrics_in,
    results_table,
    plot_ablation,
    print_table,
    _publish,
)
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
    sas = parse_shuffle_attention(opts.shuffle_attention, cfg.model.shuffle_attention)
    values = [cell_value(v, sa) for v in axis.values for sa in sas]  # the grid: swept value x shuffle attention
    for value in values:  # every value must make a valid config before anything trains
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
    earlier_sa = list(old.get("shuffle_attention", [])) if old else []
    if opts.shuffle_attention is not None or earlier_sa:
        info["shuffle_attention"] = earlier_sa + [sa for sa in sas if sa not in earlier_sa]
    info.update({
        "seeds": sorted(set(seeds) | set(old.get("seeds", []) if old else [])),
        "shard": f"{shard[0]}/{shard[1]}" if shard else None,
        "preset": cfg.preset,
        "ratlip": __version__,
    })
    write_sweep(out, spec, info)

    done = {row_key(r) for r in rows}
    cells = shard_cells(grid(values, seeds), shard)
    todo = [c for c in cells if c not in done]
    where = f", shard {shard[0]}/{shard[1]}" if shard else ""
    name = "h" if axis.is_rat else axis.key
    n_values = len(axis.values)
    sa_part = f" x {len(sas)} shuffle-attention settings" if len(sas) > 1 else ""
    console.print(
        f"ablation {out}: {n_values} {name}{sa_part} x {len(seeds)} seeds = {len(values) * len(seeds)} runs{where}: "
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
        base, sa = split_cell(value)
        shown = f"{name}={base}{'' if sa else ' shuffle_attention=false'}"
        console.rule(f"[{k}/{len(todo)}] {shown} seed={seed}", style="dim")
        trained = train_run(c, out / run)
        if trained.stopped_by in ("SIGINT", "SIGTERM"):
            import signal

            console.print(
                f"interrupted; re-run the same command to resume {shown} seed={seed} from its checkpoint",
                highlight=False,
            )
            code = 128 + int(getattr(signal, trained.stopped_by))
            break
        scores = evaluate_cell(trained.run_dir, c, metrics, opts.device, opts.progress)
        row: dict[str, Any] = {
            "sweep_key": axis.key,
            "value": base,
            "h": c.model.rat.hidden,
            "shuffle_attention": "true" if sa else "false",
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
            "time": utc_timestamp(),
        }
        rows = [r for r in rows if row_key(r) != (value, seed)] + [row]
        _publish(out, rows, metrics, title)
        log_hparams(out / run, c, row)
    if code == 0 and opts.gradcam and rows:
        rows = add_gradcam(out, rows, cfg, opts.device)
        _publish(out, rows, metrics, title)
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
    merged_sa = list(dict.fromkeys(v for doc in docs for v in doc.get("shuffle_attention", [])))
    if merged_sa:
        info["shuffle_attention"] = merged_sa
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
    from ratlip_cli.models.registry import get_family
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
    rows = get_family(cfg).param_table(cfg, clip_model, hiddens, with_release=True)
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
        ("shuffle_attention", "of which SA (ours)"),
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
        "ratlip_cli/models/ratlip/release_params.json; '-' = no released network. The release's D builds two 1x1 "
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
