"""The columns of a run's metrics.csv: shared by the harness that writes it and the steps that name their losses."""

from __future__ import annotations

EVAL_COLUMNS = ["eval_colour", "eval_shape", "eval_background", "eval_all", "eval_n"]
# Columns that depend on wall-clock time (everything else is reproducible on CPU).
TIMING_COLUMNS = ["images_per_s", "elapsed_s"]


def metrics_columns(loss_columns: tuple[str, ...] | list[str]) -> list[str]:
    """metrics.csv's columns for a training step with these loss columns (the family's)."""
    return ["step", "epoch", "images", *loss_columns, "nonfinite", "unreadable", *TIMING_COLUMNS, *EVAL_COLUMNS]
