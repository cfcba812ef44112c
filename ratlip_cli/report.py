"""`ratlip report`: one self-contained HTML page for a run or an ablation folder, to read and to share.

Everything is inside the file: plots and sample grids as base64 PNG, no scripts, no fonts or styles
from the network. A run page holds the loss and metric curves (from metrics.csv), the sample grids
over time (samples/step-*.png with their captions), the evaluations (eval.csv), the resolved config
and the environment; an ablation page holds the table (mean ± std over seeds) and the plot with error
bars, one row per cell, the sweep spec and the environment.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

from rich.table import Table
from rich.text import Text

from ratlip_cli.console import console
from ratlip_cli.errors import RatlipError

REPORT_FILE = "report.html"
ENVIRONMENT_FILE = "environment.json"
_STEP_FILE = re.compile(r"^step-(\d+)\.png$")

# Names for the loss columns the families log; a column without one is shown by its own name.
LOSS_LABELS = {
    "d_loss": "D total", "g_loss": "G total", "d_real": "real", "d_fake": "fake", "d_mis": "mismatched",
    "ma_gp": "MA-GP", "g_clip": "cos(CLIP image, sentence)", "g_damsm": "DAMSM", "g_kl": "KL (CA)",
    "g_per": "perceptual", "g_prior": "text prior",
}
OTHER_PANELS: list[tuple[str, list[tuple[str, str]]]] = [
    ("throughput", [("images_per_s", "images/s")]),
    (
        "in-training evaluation (shapes checker, EMA generator)",
        [("eval_colour", "colour"), ("eval_shape", "shape"), ("eval_background", "background")],
    ),
]


def loss_columns(header: Sequence[str]) -> list[str]:
    """The family's loss columns of a metrics.csv header: those between `images` and `nonfinite`."""
    header = list(header)
    if "images" not in header or "nonfinite" not in header:
        return []
    return header[header.index("images") + 1 : header.index("nonfinite")]


def loss_panels(header: Sequence[str]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Panels for whatever loss columns this run's family logged: totals, D parts, G parts, MA-GP."""
    cols = loss_columns(header)
    label = lambda c: (c, LOSS_LABELS.get(c, c))  # noqa: E731
    totals = [label(c) for c in ("d_loss", "g_loss") if c in cols]
    d_parts = [label(c) for c in cols if c.startswith("d_") and c != "d_loss"]
    g_parts = [label(c) for c in cols if c.startswith("g_") and c != "g_loss"]
    ma_gp = [label("ma_gp")] if "ma_gp" in cols else []
    others = [label(c) for c in cols if label(c) not in totals + d_parts + g_parts + ma_gp]
    panels = [("losses", totals), ("D parts", d_parts), ("G parts", g_parts), ("MA-GP", ma_gp),
              ("other losses", others)]
    return [(title, series) for title, series in panels if series]


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;vertical-align:top}
td{white-space:nowrap}.wide{overflow-x:auto}
th{background:#f3f3f3}td.text,th.text{text-align:left}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em}
figure{margin:1em 0}figcaption{font-size:.9em;color:#444}
img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}
.warn{color:#a00;font-weight:bold}.note{color:#555;font-size:.9em}
"""


# ----------------------------------------------------------------------------- small HTML helpers


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def png_data_uri(data: bytes) -> str:
    """A data: URI for PNG bytes, so the page needs no other file."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(data: bytes, alt: str, css_class: str = "", min_width: int = 0) -> str:
    """An inline PNG; small images (e.g. 32 px grids) are shown at an integer zoom of at least ``min_width`` px."""
    cls = f' class="{css_class}"' if css_class else ""
    size = ""
    if min_width:
        from PIL import Image

        width = Image.open(io.BytesIO(data)).size[0]
        if 0 < width < min_width:
            size = f' width="{width * math.ceil(min_width / width)}"'
    return f'<img{cls}{size} alt="{_esc(alt)}" src="{png_data_uri(data)}">'


def _plain(renderable: Any) -> str:
    """Text of a Rich cell or header (markup removed)."""
    if isinstance(renderable, Text):
        return renderable.plain
    return Text.from_markup(str(renderable)).plain


def rich_table_html(table: Table, table_id: str = "") -> str:
    """The same table `ratlip` prints in the terminal, as an HTML table (first column left-aligned)."""
    ident = f' id="{_esc(table_id)}"' if table_id else ""
    parts = [f"<table{ident}>"]
    if table.title:
        parts.append(f"<caption>{_esc(_plain(table.title))}</caption>")
    if table.show_header:
        heads = "".join(
            f'<th class="{"text" if i == 0 else ""}">{_esc(_plain(c.header))}</th>' for i, c in enumerate(table.columns)
        )
        parts.append(f"<tr>{heads}</tr>")
    columns = [list(c.cells) for c in table.columns]
    for r in range(table.row_count):
        cells = "".join(
            f'<td class="{"text" if i == 0 else ""}">{_esc(_plain(col[r]))}</td>' for i, col in enumerate(columns)
        )
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    return '<div class="wide">' + "\n".join(parts) + "</div>"


def dict_table_html(rows: Sequence[dict[str, Any]], columns: Sequence[str], table_id: str = "") -> str:
    """A plain HTML table of the given columns of dict rows."""
    ident = f' id="{_esc(table_id)}"' if table_id else ""
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(_short(r.get(c, '')))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f'<div class="wide"><table{ident}><tr>{head}</tr>{body}</table></div>'


def _short(value: Any) -> str:
    """Numbers from CSVs at 4 significant digits (the CSV keeps them all)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isfinite(number) and not str(value).strip().lstrip("-").isdigit():
        return f"{number:.4g}"
    return str(value)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [dict(r) for r in csv.DictReader(fh)]


def _page(title: str, body: list[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _environment_section(folder: Path) -> list[str]:
    from ratlip_cli.environment import environment

    out = ["<h2>Environment</h2>"]
    stored = folder / ENVIRONMENT_FILE
    if stored.is_file():
        try:
            recorded = json.loads(stored.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = None
        if isinstance(recorded, dict):
            out.append(f"<p>Where the run trained ({_esc(ENVIRONMENT_FILE)}):</p>")
            out.append(_kv_table(recorded, "environment-run"))
    out.append("<p>Where this report was made:</p>")
    out.append(_kv_table(environment(), "environment-report"))
    return out


def _kv_table(values: dict[str, Any], table_id: str) -> str:
    rows = "".join(f'<tr><th class="text">{_esc(k)}</th><td class="text">{_esc(v)}</td></tr>' for k, v in values.items())
    return f'<table id="{table_id}">{rows}</table>'


# ----------------------------------------------------------------------------- a run


def curves_png(rows: Sequence[dict[str, str]]) -> bytes | None:
    """One panel per group of metrics.csv columns that has values, against the step; None without data.

    The loss panels follow the run's own columns, so every family's losses are drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = []
    for title, series in loss_panels(list(rows[0]) if rows else []) + OTHER_PANELS:
        lines = []
        for col, label in series:
            pts = [(float(r["step"]), v) for r in rows if (v := _number(r.get(col))) is not None and _number(r.get("step")) is not None]
            if pts:
                lines.append((label, pts))
        if lines:
            panels.append((title, lines))
    if not panels:
        return None
    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5.2 * ncols, 3.0 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (title, lines) in zip(axes, panels):
        for label, pts in lines:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="." if len(pts) < 30 else None, linewidth=1.2, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(True, alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _figure_png(fig)


def sample_grids(samples: Path, max_grids: int) -> list[tuple[int, Path]]:
    """(step, path) of at most ``max_grids`` grids, evenly spread, always the first and the last."""
    found = sorted((int(m.group(1)), p) for p in samples.glob("step-*.png") if (m := _STEP_FILE.match(p.name)))
    if len(found) <= max_grids or max_grids <= 0:
        return found if max_grids > 0 else []
    if max_grids == 1:
        return [found[-1]]
    picks = sorted({round(i * (len(found) - 1) / (max_grids - 1)) for i in range(max_grids)})
    return [found[i] for i in picks]


def _eval_section(rows: list[dict[str, str]]) -> list[str]:
    from ratlip_cli.evaluate import results_table

    out = ["<h2>Evaluation</h2>"]
    if not rows:
        out.append('<p id="no-eval">No evaluation yet (eval.csv is missing): run <code>ratlip eval --run RUN</code>.</p>')
        return out
    latest = dict(rows[-1])
    for key in ("fid", "kid_x1e3", "kid_std_x1e3", "clip_score", "r_precision"):
        latest[key] = _number(latest.get(key))
    if all(latest[k] is not None for k in ("fid", "kid_x1e3", "kid_std_x1e3", "clip_score", "r_precision")):
        out.append(f"<p>The latest evaluation ({_esc(latest.get('time', ''))}), as <code>ratlip eval</code> printed it:</p>")
        table = results_table(latest)
        table.title = None
        out.append(rich_table_html(table, "eval-latest"))
    if "NOT FID" in str(rows[-1].get("feature_extractor", "")):
        out.append('<p class="warn">random-tiny features: these fid/kid numbers are NOT FID/KID (tests only).</p>')
    columns = ["time", "protocol", "num_images", "fid", "kid_x1e3", "clip_score", "r_precision", "feature_extractor",
               "device"]
    out.append(f"<p>All evaluations in eval.csv ({len(rows)}):</p>")
    out.append(dict_table_html(rows, [c for c in columns if any(c in r for r in rows)], "eval-history"))
    return out


def run_page(run: Path, max_grids: int) -> str:
    """The HTML page of one run directory."""
    from ratlip_cli.train.run import RunPaths, read_metrics

    paths = RunPaths(run)
    name = run.resolve().name
    rows = read_metrics(paths.metrics) if paths.metrics.is_file() else []
    body = [f'<h1>ratlip run <span id="run-name">{_esc(name)}</span></h1>']
    last = rows[-1] if rows else {}
    facts = []
    if last:
        facts.append(f"step {_esc(last.get('step'))}, epoch {_esc(last.get('epoch'))}, {_esc(last.get('images'))} images")
        if last.get("elapsed_s"):
            facts.append(f"{_esc(last['elapsed_s'])} s of training")
    export = paths.export / "generator.safetensors"
    facts.append("exported generator: " + ("export/generator.safetensors" if export.is_file() else "none yet"))
    body.append(f'<p id="run-facts">{"; ".join(facts)}</p>')
    if paths.clip.is_file():
        body.append('<p class="warn">This run used a random (untrained) CLIP: its images and scores say nothing '
                    "about a pretrained-CLIP model.</p>")

    body.append("<h2>Curves</h2>")
    png = curves_png(rows)
    if png is None:
        body.append("<p>No metrics yet (metrics.csv is missing or empty).</p>")
    else:
        body.append(f'<p class="note">From metrics.csv: the mean over each log interval ({len(rows)} rows).</p>')
        body.append(_img(png, "training curves", "curves"))

    grids = sample_grids(paths.samples, max_grids)
    total = len(list(paths.samples.glob("step-*.png"))) if paths.samples.is_dir() else 0
    body.append("<h2>Samples over time</h2>")
    if not grids:
        body.append("<p>No sample grids yet.</p>")
    else:
        body.append(f'<p class="note">EMA generator, fixed noise, fixed train and test captions; {len(grids)} of '
                    f"{total} grids.</p>")
    for step, path in grids:
        captions = path.with_suffix(".txt")
        text = captions.read_text(encoding="utf-8") if captions.is_file() else ""
        body.append(f'<figure class="grid" data-step="{step}">{_img(path.read_bytes(), f"samples at step {step}", "samples", 480)}'
                    f"<figcaption>step {step}"
                    + (f"<details><summary>captions</summary><pre>{_esc(text)}</pre></details>" if text else "")
                    + "</figcaption></figure>")

    body += _eval_section(_read_csv(run / "eval.csv"))
    body.append("<h2>Resolved config</h2>")
    config = paths.config.read_text(encoding="utf-8") if paths.config.is_file() else "(config.yaml is missing)"
    body.append(f'<pre id="config">{_esc(config)}</pre>')
    body += _environment_section(run)
    return _page(f"ratlip report: {name}", body)


# ----------------------------------------------------------------------------- an ablation


def ablation_page(folder: Path) -> str:
    """The HTML page of an ablation folder: table and plot (mean ± std over seeds), cells, spec."""
    import yaml

    from ratlip_cli import ablate

    name = folder.resolve().name
    rows = ablate.read_rows(folder / ablate.CSV_FILE)
    body = [f'<h1>ratlip ablation <span id="run-name">{_esc(name)}</span></h1>']
    if not rows:
        body.append("<p>No finished cells yet (ablation.csv is empty or missing).</p>")
    else:
        metrics = ablate.metrics_in(rows)
        key = ablate.rows_key(rows)
        axis = "h" if key == ablate.RAT_KEY else "value"
        what = "h" if axis == "h" else f"value of {key}"
        body.append("<h2>Results</h2>")
        body.append(f'<p class="note">One line per {_esc(what)}: mean ± std over seeds ({len(rows)} cells).</p>')
        table = ablate.results_table(rows, metrics, "")
        body.append(rich_table_html(table, "ablation-table"))
        if any(ablate.NOT_FID_MARK in str(r.get("feature_extractor", "")) for r in rows):
            body.append('<p class="warn">random-tiny features: the fid/kid columns are NOT FID/KID (tests only).</p>')
        with tempfile.TemporaryDirectory() as tmp:
            plot = Path(tmp) / "ablation.png"
            ablate.plot_ablation(rows, metrics, plot, name)
            if plot.is_file():
                body.append(_img(plot.read_bytes(), f"ablation plot: metrics against {what} with error bars",
                                 "ablation-plot"))
        figure = folder / ablate.GRADCAM_FIGURE
        if figure.is_file():
            body.append(_img(figure.read_bytes(), "Grad-CAM of every cell (rows) on test captions (columns)",
                             "ablation-gradcam"))
        body.append("<h2>Cells</h2>")
        sa = ["shuffle_attention"] if any(str(r.get("shuffle_attention", "")).lower() == "false" for r in rows) else []
        wanted = [*(["h"] if axis == "h" else ["sweep_key", "value"]), *sa, "seed", *ablate.SCORE_COLUMNS,
                  "gradcam_object_share", "gradcam_object_area", "trainable_params", "steps", "train_img_per_s", "run"]
        present = [c for c in wanted if any(str(r.get(c, "")) != "" for r in rows)]
        body.append(dict_table_html(rows, present, "ablation-cells"))
    sweep = folder / ablate.SWEEP_FILE
    if sweep.is_file():
        body.append("<h2>Sweep spec</h2>")
        doc = yaml.safe_load(sweep.read_text(encoding="utf-8"))
        body.append(f'<pre id="config">{_esc(yaml.safe_dump(doc, sort_keys=False))}</pre>')
    body += _environment_section(folder)
    return _page(f"ratlip report: {name}", body)


# ----------------------------------------------------------------------------- the command


def folder_kind(folder: Path) -> str:
    """'ablation' or 'run'; a one-line error for anything else."""
    from ratlip_cli import ablate

    if not folder.is_dir():
        raise RatlipError(f"{folder} is not a folder; give a run folder (runs/NAME) or an ablation folder")
    if (folder / ablate.CSV_FILE).is_file() or (folder / ablate.SWEEP_FILE).is_file():
        return "ablation"
    if (folder / "metrics.csv").is_file() or (folder / "config.yaml").is_file():
        return "run"
    raise RatlipError(
        f"{folder} is neither a run folder (config.yaml, metrics.csv) nor an ablation folder (ablation.csv, "
        "sweep.yaml); give runs/NAME or runs/ablate-PRESET"
    )


def write_report(folder: Path, out: Path | None = None, max_grids: int = 12) -> Path:
    """Write the HTML report of a run or ablation folder (default: FOLDER/report.html) and return its path."""
    from ratlip_cli.files import write_text

    if max_grids < 0:
        raise RatlipError(f"--max-grids must be 0 or more, not {max_grids}")
    kind = folder_kind(folder)
    page = ablation_page(folder) if kind == "ablation" else run_page(folder, max_grids)
    target = out if out is not None else folder / REPORT_FILE
    if target.is_dir():
        raise RatlipError(f"--out {target} is a folder; give a file name such as {target / REPORT_FILE}")
    write_text(target, page)
    console.print(f"wrote the {kind} report {target} ({target.stat().st_size / 1024:.0f} KiB)", highlight=False)
    return target
