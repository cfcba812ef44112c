"""Mean and std over seeds, the results table and the ablation plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from rich.markup import escape
from rich.table import Table

from ratlip_cli.metrics.clip_score import RANDOM_CLIP_NOTE, clip_metrics_note
from ratlip_cli.console import console
from ratlip_cli.files import atomic_write
from ratlip_cli.ablate.options import (
    CSV_FILE,
    PLOT_FILE,
    METRIC_NAMES,
    RAT_KEY,
    PARAM_COLUMNS,
    METRIC_COLUMNS,
    SCORE_COLUMNS,
    NOT_FID_MARK,
    row_axis,
    rows_key,
    split_cell,
    _value_order,
)
from ratlip_cli.ablate.sweep import (
    write_rows,
    _num,
)


# ----------------------------------------------------------------------------- summary, table, plot


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per grid value (swept value x shuffle attention): the grid value, the swept value
    (`base`), h for the RAT sweep, `shuffle_attention`, seeds, and (mean, std) of every numeric column
    across seeds (std None for one seed)."""
    import numpy as np

    rat = rows_key(rows) == RAT_KEY
    by_value: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_value.setdefault(row_axis(r)[1], []).append(r)
    out = []
    for value in sorted(by_value, key=_value_order):
        group = by_value[value]
        base, sa = split_cell(value)
        entry: dict[str, Any] = {"value": value, "base": base, "h": int(base) if rat else None,
                                 "shuffle_attention": sa, "seeds": sorted(int(r["seed"]) for r in group)}
        for col in PARAM_COLUMNS + SCORE_COLUMNS + GRADCAM_NUMBERS + ["train_img_per_s", "train_s", "steps"]:
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


GRADCAM_NUMBERS = ["gradcam_object_share", "gradcam_object_area"]


def cell_label(entry: dict[str, Any], rat: bool) -> str:
    """A summary entry's label: h (0 = RATLIP without RAT) or the value, plus "no SA" when shuffle attention is off."""
    label = _h_label(entry["h"]) if rat else entry["base"]
    return label if entry["shuffle_attention"] else f"{label}, no SA"


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
    cols: list[tuple[str, str, str]] = [("rat_params", "RAT LSTM", ",.0f")]
    if any(not e["shuffle_attention"] for e in summary):
        cols.append(("sa_params", "SA", ",.0f"))
    cols += [
        ("generator_trainable", "G trainable", ",.0f"),
        ("trainable_params", "trainable (G+D+head)", ",.0f"),
        ("total_params", "total (with frozen text encoder)", ",.0f"),
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
    if any(e["gradcam_object_share"][0] is not None for e in summary):
        cols += [("gradcam_object_share", "Grad-CAM in object", ".3f"), ("gradcam_object_area", "object area", ".3f")]
    cols += [("steps", "steps", ".0f"), ("train_img_per_s", "img/s", ".1f"), ("train_s", "train s", ".0f")]
    table.add_column("h" if key == RAT_KEY else key, justify="right", style="bold")
    table.add_column("seeds", justify="right")
    for _, title_, _ in cols:
        table.add_column(title_, justify="right")
    for e in summary:
        seeds = ",".join(map(str, e["seeds"]))
        label = cell_label(e, key == RAT_KEY)
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


def _panel_figure(n: int):
    """A figure of ``n`` panels stacked on one shared x axis (the ablation plots' layout)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 3.0 * n + 0.6), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]


def plot_ablation(rows: Sequence[dict[str, Any]], metrics: Sequence[str], path: Path, title: str = "") -> None:
    """ablation.png: one panel per plotted metric (CS, FID, shapes all-match) against the swept value
    (for h: a log2 axis, h = 0 marked as RATLIP without RAT), trainable parameters (dashed) on a second
    axis. Written atomically."""
    if rows_key(rows) != RAT_KEY:
        _plot_values(rows, metrics, path, title)
        return

    summary = summarize(rows)
    if not summary:
        return
    panels = _metric_panels(metrics, summary)
    hs = sorted({e["h"] for e in summary})
    xs = _x_positions(hs)
    fig, axes = _panel_figure(len(panels))
    # One series per shuffle-attention setting: the authors' network (SA on) in blue, SA off in orange.
    groups = [(sa, [e for e in summary if e["shuffle_attention"] == sa]) for sa in (True, False)]
    groups = [(sa, g) for sa, g in groups if g]
    style = {True: ("tab:blue", "tab:red", "--"), False: ("tab:orange", "tab:brown", ":")}
    for ax, (col, label) in zip(axes, panels):
        twin = None
        for sa, group in groups:
            line, star, dash = style[sa]
            if col is not None:
                # RAT (h > 0) as a line on the log2 axis; h = 0 (no RAT) as a separate star left of the break.
                pts = [(xs[e["h"]], e[col][0], e[col][1] or 0.0) for e in group if e["h"] > 0 and e[col][0] is not None]
                if pts:
                    x, y, err = zip(*pts)
                    ax.errorbar(x, y, yerr=err, marker="o", color=line, capsize=3)
                galip = [(e[col][0], e[col][1] or 0.0) for e in group if e["h"] == 0 and e[col][0] is not None]
                if galip:
                    ax.errorbar([xs[0]], [galip[0][0]], yerr=[galip[0][1]], marker="*", markersize=14, color=star,
                                capsize=3, linestyle="none")
                ax.set_ylabel(_axis_label(label), color="tab:blue")
                ax.set_title(label, fontsize=9)
                ax.grid(True, alpha=0.3)
            params = {e["h"]: e["trainable_params"][0] for e in group}
            if all(p is not None for p in params.values()):
                if twin is None:
                    twin = ax.twinx() if col is not None else ax
                rat = [(xs[h], p) for h, p in sorted(params.items()) if h > 0]
                if rat:
                    twin.plot(*zip(*rat), linestyle=dash, marker=".", color="gray")
                if 0 in params:
                    twin.plot([xs[0]], [params[0]], marker="D", markersize=4, color="gray", linestyle="none")
                twin.set_ylabel("trainable parameters", color="gray")
                twin.ticklabel_format(axis="y", style="plain", useOffset=False)
        if 0 in xs and len(xs) > 1:
            ax.axvline(xs[0] + 0.75, color="black", linewidth=0.6, linestyle=":")
    from matplotlib.lines import Line2D

    handles = []
    for sa, _ in groups:
        line, star, dash = style[sa]
        what = "" if sa else ", shuffle attention off"
        handles += [
            Line2D([], [], color=line, marker="o", label=f"RAT{what}, mean ± std over seeds"),
            Line2D([], [], color=star, marker="*", markersize=10, linestyle="none", label=f"RATLIP without RAT (h=0){what}"),
        ]
    handles.append(Line2D([], [], color="gray", marker=".", linestyle="--", label="trainable parameters (right axis)"))
    axes[0].legend(handles=handles if panels[0][0] is not None else handles[-1:], fontsize=7, loc="best")
    axes[-1].set_xticks([xs[h] for h in hs])
    axes[-1].set_xticklabels(["no RAT\n(h=0)" if h == 0 else str(h) for h in hs])
    axes[-1].set_xlabel("RAT hidden size h (log2 axis)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png"))


def _axis_label(title: str) -> str:
    """A panel's y-axis label: its title up to the caveat (" - ...") or the reading hint (", ..."), which stay in the title."""
    return title.split(" - ")[0].split(",")[0]


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
    if any(e.get("gradcam_object_share", (None,))[0] is not None for e in summary):
        panels.append(("gradcam_object_share", "Grad-CAM mass inside the object (chance: the object's area, table)"))
    return panels or [(None, "parameters")]


def _plot_values(rows: Sequence[dict[str, Any]], metrics: Sequence[str], path: Path, title: str) -> None:
    """The plot of a sweep of any key other than the RAT hidden size: points (mean ± std over seeds)
    at each value, joined when the values are numbers; trainable parameters on a second axis."""

    summary = summarize(rows)
    if not summary:
        return
    key = rows_key(rows)
    panels = _metric_panels(metrics, summary)
    values = [e["value"] for e in summary]
    with_sa = any(not e["shuffle_attention"] for e in summary)
    xs = _value_positions(values) if not with_sa else {v: float(k) for k, v in enumerate(values)}
    numeric = all(_value_order(v)[0] == 0 for v in values) and not with_sa
    fig, axes = _panel_figure(len(panels))
    params = [e["trainable_params"][0] for e in summary]
    for ax, (col, label) in zip(axes, panels):
        if col is not None:
            pts = [(xs[e["value"]], e[col][0], e[col][1] or 0.0) for e in summary if e[col][0] is not None]
            if pts:
                x, y, err = zip(*pts)
                ax.errorbar(x, y, yerr=err, marker="o", color="tab:blue", capsize=3,
                            linestyle="-" if numeric else "none")
            ax.set_ylabel(_axis_label(label), color="tab:blue")
            ax.set_title(label, fontsize=9)
            ax.grid(True, alpha=0.3)
        known = [(xs[v], p) for v, p in zip(values, params) if p is not None]
        if known:
            twin = ax.twinx() if col is not None else ax
            twin.plot(*zip(*known), linestyle="--" if numeric else "none", marker=".", color="gray")
            twin.set_ylabel("trainable parameters", color="gray")
            twin.ticklabel_format(axis="y", style="plain", useOffset=False)
    axes[-1].set_xticks([xs[v] for v in values])
    axes[-1].set_xticklabels([cell_label(e, False).replace(", ", "\n") for e in summary])
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
