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


def results_table(row: dict[str, Any]) -> Table:
    """The metrics and the protocol of one evaluation as a Rich table."""
    from rich.markup import escape

    not_fid = row["feature_extractor"] == NOT_FID_MARK
    table = Table(title=f"ratlip eval: {escape(str(row['source']))}", show_header=True)
    table.add_column("metric", style="bold")
    table.add_column("value", overflow="fold")
    if not_fid:
        table.add_row("FID [red](random-tiny, NOT FID)[/red]", f"{row['fid']:.3f}")
        kid = f"{row['kid_x1e3']:.3f} ± {row['kid_std_x1e3']:.3f}"
        table.add_row("KID x1e3 [red](random-tiny, NOT KID)[/red]", kid)
    else:
        table.add_row(f"FID (clean-fid, mode {row['fid_mode']})", f"{row['fid']:.3f}")
        table.add_row("KID x1e3", f"{row['kid_x1e3']:.3f} ± {row['kid_std_x1e3']:.3f}")
    note = clip_metrics_note(str(row.get("eval_clip", "")))
    mark = f" [red]({escape(note)})[/red]" if note == RANDOM_CLIP_NOTE else f" [yellow]({escape(note)})[/yellow]" if note else ""
    table.add_row(f"CLIP score (x100){mark}", f"{row['clip_score']:.2f}")
    table.add_row(
        f"CLIP R-precision (%, top-1 of {row['r_precision_candidates']}){mark}", f"{row['r_precision']:.2f}"
    )
    if row.get("damsm_r_precision", "") != "":
        table.add_row(f"DAMSM R-precision (%, top-1 of {row['damsm_r_precision_candidates']}, the run's encoders)",
                      f"{row['damsm_r_precision']:.2f}")
    table.add_section()
    protocol = [
        ("generator", row.get("generator") or "- (images given)"),
        ("images", f"{row['num_images']} at {row['image_size']} px, passes: {row['passes'] or '-'}"),
        ("reference", f"{row['ref_images']} {row['split']} images of {row['dataset']} at {row['ref_size']} px"),
        ("features", f"{row['feature_extractor']}: {row['feature_weights']}"),
        ("eval CLIP", row["eval_clip"]),
        ("seed / device", f"{row['seed']} / {row['device']}"),
    ]
    for name, value in protocol:
        table.add_row(name, escape(str(value)), style="dim")
    return table


def report(row: dict[str, Any], as_json: bool = False) -> None:
    """Print the table (stdout), or JSON on stdout and the table on stderr."""
    if as_json:
        err_console.print(results_table(row))
        console.print(json.dumps(row), highlight=False, markup=False, soft_wrap=True)
    else:
        console.print(results_table(row))
