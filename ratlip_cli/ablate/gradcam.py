"""`ratlip ablate ... --gradcam`: the Grad-CAM figure across the ablation's cells and, on shapes, the
Grad-CAM object share per row (columns `GRADCAM_COLUMNS`; ratlip_cli/gradcam.py does the work).

It runs after the cells (trained now or earlier), on every row of the folder's CSV: a row gets its
share computed when it has none yet or was scored with another target, layer or evaluation CLIP
(`gradcam_protocol`), so adding --gradcam to a finished sweep trains nothing. The maps are not part
of the sweep spec: they explain the trained generators and never change a training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ratlip_cli.ablate.options import EVAL_SEED, RAT_KEY, row_axis, split_cell
from ratlip_cli.ablate.sweep import _sorted_rows
from ratlip_cli.config import Config
from ratlip_cli.console import console, warn

GRADCAM_FIGURE = "gradcam.png"
# Captions in the figure: this many test-split captions, evenly spread (`shapes_eval_captions`).
FIGURE_CAPTIONS = 4


def _label(row: dict[str, Any]) -> str:
    key, value = row_axis(row)
    base, sa = split_cell(value)
    text = (f"h={base}" + (" (no RAT)" if base == "0" else "")) if key == RAT_KEY else f"{key.rsplit('.', 1)[-1]}={base}"
    return f"{text}{'' if sa else ', no SA'}, seed {row['seed']}"


def add_gradcam(out: Path, rows: Sequence[dict[str, Any]], cfg: Config, device: str | None) -> list[dict[str, Any]]:
    """Write OUT/gradcam.png (a row per cell, its lowest seed; `FIGURE_CAPTIONS` test captions) and,
    on the shapes dataset, return the rows with their Grad-CAM object share filled in."""
    from ratlip_cli.data.shards import open_dataset
    from ratlip_cli.dist import resolve_device
    from ratlip_cli.export import load_generator
    from ratlip_cli.gradcam import (
        GradcamRow,
        figure_title,
        generate_images,
        gradcam_figure,
        make_explainer,
        shapes_object_share,
    )
    from ratlip_cli.train.shapes_eval import shapes_eval_captions

    dev = resolve_device(device)
    dataset = open_dataset(cfg.data.root, cfg.data.format, cfg.data.shard_url)
    figure_captions = shapes_eval_captions(dataset, "test", FIGURE_CAPTIONS)
    shapes = cfg.data.name == "shapes"
    share_captions = shapes_eval_captions(dataset, "test", cfg.eval.num) if shapes else []
    explainer = None
    figure_rows: list[GradcamRow] = []
    shown: set[str] = set()
    updated: list[dict[str, Any]] = []
    for row in _sorted_rows(rows):
        run_dir = Path(out) / str(row.get("run", ""))
        if not (run_dir / "export").is_dir():
            warn(f"Grad-CAM: {run_dir} has no export; its row is left out of {GRADCAM_FIGURE}")
            updated.append(row)
            continue
        loaded = load_generator(run_dir, dev, cfg.eval.generator)
        if explainer is None or explainer.per_run:
            explainer = make_explainer(_with_eval(loaded.cfg, cfg), dev, run_dir)
        value = row_axis(row)[1]
        if value not in shown:  # rows are sorted by (value, seed): the first is the lowest seed
            shown.add(value)
            images = generate_images(loaded, figure_captions, EVAL_SEED)
            figure_rows.append(GradcamRow(_label(row), images, explainer.explain(images, figure_captions)))
        if shapes and str(row.get("gradcam_protocol", "")) != explainer.protocol:
            images = generate_images(loaded, share_captions, EVAL_SEED)
            res = shapes_object_share(images, explainer.explain(images, share_captions))
            row = {**row, "gradcam_object_share": res["share"], "gradcam_object_area": res["area"],
                   "gradcam_images": res["n"], "gradcam_protocol": explainer.protocol}
            if res["skipped"]:
                warn(f"Grad-CAM {_label(row)}: {res['skipped']} of {len(share_captions)} images left out "
                     "(no object found, or an all-zero map)")
        updated.append(row)
    if figure_rows:
        gradcam_figure(figure_rows, figure_captions, Path(out) / GRADCAM_FIGURE, figure_title(explainer))
        console.print(f"wrote {Path(out) / GRADCAM_FIGURE} ({len(figure_rows)} cells x {len(figure_captions)} captions)",
                      highlight=False)
    if explainer is not None and explainer.note:
        warn(f"Grad-CAM maps from this evaluation CLIP: {explainer.note}")
    return updated


def _with_eval(run_cfg: Config, sweep_cfg: Config) -> Config:
    """The run's config with the sweep's eval section (the --gradcam settings of this invocation)."""
    import copy

    c = copy.deepcopy(run_cfg)
    c.eval = copy.deepcopy(sweep_cfg.eval)
    return c
