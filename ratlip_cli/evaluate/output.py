"""Output of `ratlip eval`: the eval.csv row and the results table."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from ratlip_cli.console import console, err_console
from ratlip_cli.files import write_text
from ratlip_cli.metrics.clip_score import (
    RANDOM_CLIP_NOTE,
    clip_metrics_note,
)
from ratlip_cli.evaluate.options import (
    NOT_FID_MARK,
)


# ----------------------------------------------------------------------------- output


def append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append `row` to a CSV (created with a header); a file with other columns is rewritten with the union."""
    header = list(row)
    if path.is_file() and path.stat().st_size > 0:
        with open(path, newline="", encoding="utf-8") as fh:
            existing = list(csv.DictReader(fh))
            old_header = list(existing[0].keys()) if existing else header
        if old_header == header:
            with open(path, "a", newline="", encoding="utf-8") as fh:
                csv.DictWriter(fh, fieldnames=header).writerow(row)
            return
        header = old_header + [k for k in header if k not in old_header]
        rows = existing + [row]
    else:
        rows = [row]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def _value(row: dict[str, Any], key: str) -> float | None:
    """A metric of the row as a float; None when it was not computed ("" or missing)."""
    value = row.get(key, "")
    if value in ("", None):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def results_table(row: dict[str, Any]) -> Table:
    """The metrics and the protocol of one evaluation as a Rich table; the title, the first row and the FID label name the protocol."""
    from rich.markup import escape

    protocol = str(row.get("protocol") or "clean-fid")
    tag = f"[{protocol}]"
    not_fid = row["feature_extractor"] == NOT_FID_MARK
    table = Table(title=f"ratlip eval {escape(tag)}: {escape(str(row['source']))}", show_header=True)
    table.add_column("metric", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("protocol", escape(protocol))
    add = table.add_row

    fid, kid = _value(row, "fid"), _value(row, "kid_x1e3")
    if protocol == "galip":
        fid_label = f"FID (protocol galip: the release's pipeline vs {row.get('ref_stats') or 'the split'})"
    else:
        fid_label = f"FID (clean-fid, mode {row['fid_mode']})"
    if fid is not None:
        add("FID [red](random-tiny, NOT FID)[/red]" if not_fid else escape(fid_label), f"{fid:.3f}")
    if kid is not None:
        label = "KID x1e3" + (" [red](random-tiny, NOT KID)[/red]" if not_fid else "")
        add(label, f"{kid:.3f} ± {float(row['kid_std_x1e3']):.3f}")
    note = clip_metrics_note(str(row.get("eval_clip", "")))
    mark = f" [red]({escape(note)})[/red]" if note == RANDOM_CLIP_NOTE else f" [yellow]({escape(note)})[/yellow]" if note else ""
    cs, rp = _value(row, "clip_score"), _value(row, "r_precision")
    if cs is not None:
        how = " (transf_to_CLIP_input, mean over batches)" if protocol == "galip" else ""
        add(f"CLIP score (x100){how}{mark}", f"{cs:.2f}")
    if rp is not None:
        add(f"CLIP R-precision (%, top-1 of {row['r_precision_candidates']}){mark}", f"{rp:.2f}")
    is_mean = _value(row, "inception_score")
    if is_mean is not None:
        add("Inception Score (10 splits)", f"{is_mean:.3f} ± {float(row['inception_score_std']):.3f}")
    elif row.get("is_note"):
        add("Inception Score", f"[yellow]not available: {escape(str(row['is_note']))}[/yellow]")
    names = (("precision", "pr_k"), ("recall", "pr_k"), ("density", "dc_k"), ("coverage", "dc_k"))
    for name, k in names:
        value = _value(row, name)
        if value is not None:
            warn_mark = " [red](random-tiny features)[/red]" if not_fid else ""
            add(f"{name} (k = {row.get(k, '')}){warn_mark}", f"{value:.4f}")
    if row.get("damsm_r_precision", "") != "":
        add(f"DAMSM R-precision (%, top-1 of {row['damsm_r_precision_candidates']}, the run's encoders)",
            f"{float(row['damsm_r_precision']):.2f}")
    table.add_section()
    reference = (f"{row['ref_images']} {row['split']} images of {row['dataset']} at {row['ref_size']} px"
                 if row.get("ref_images", "") != "" else f"{row['split']} split of {row['dataset']}")
    protocol_rows = [
        ("generator", row.get("generator") or "- (images given)"),
        ("images", f"{row['num_images']} at {row['image_size']} px, passes: {row['passes'] or '-'}"),
        ("reference", reference + (f"; FID against {row['ref_stats']}" if row.get("ref_stats") else "")),
        ("features", f"{row['feature_extractor']}: {row['feature_weights']}"),
        ("eval CLIP", row["eval_clip"]),
        ("seed / device", f"{row['seed']} / {row['device']}"),
    ]
    for name, value in protocol_rows:
        table.add_row(name, escape(str(value)), style="dim")
    return table


def report(row: dict[str, Any], as_json: bool = False) -> None:
    """Print the table (stdout), or JSON on stdout and the table on stderr."""
    if as_json:
        err_console.print(results_table(row))
        console.print(json.dumps(row), highlight=False, markup=False, soft_wrap=True)
    else:
        console.print(results_table(row))
