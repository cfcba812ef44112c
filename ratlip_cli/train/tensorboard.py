"""TensorBoard event files of a run (`runs/NAME/tensorboard/`), written by rank 0 next to metrics.csv.

Tags: ``loss/<column>`` for every loss column of the family's metrics row (parts and MA-GP
included), ``eval/<name>`` for in-training evaluation, ``speed/images_per_s``, ``progress/epoch``
and ``progress/images``, ``lr/<optimiser>``, and the sample grid as the image ``samples`` with its
captions as the text ``samples/captions``. A resumed run opens its writer with ``purge_step`` =
checkpoint step + 1, so TensorBoard drops the steps the interrupted process logged after the
checkpoint and the curves continue without a step twice. An ablation cell adds its swept settings
and final metrics to ``tensorboard/hparams`` (TensorBoard's HParams view compares the cells).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from ratlip_cli.console import warn

FOLDER = "tensorboard"
# metrics.csv columns that are not losses.
PROGRESS_COLUMNS = {"epoch": "progress/epoch", "images": "progress/images", "nonfinite": "progress/nonfinite_steps",
                    "images_per_s": "speed/images_per_s"}
SKIPPED_COLUMNS = {"step", "elapsed_s", "eval_n"}


def scalar_tag(column: str) -> str | None:
    """The TensorBoard tag of a metrics.csv column (None for columns that are not curves)."""
    if column in SKIPPED_COLUMNS:
        return None
    if column in PROGRESS_COLUMNS:
        return PROGRESS_COLUMNS[column]
    if column.startswith("eval_"):
        return "eval/" + column[len("eval_"):]
    return "loss/" + column


def _finite(value: Any) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class RunBoard:
    """The event writer of one run; every method is a no-op when disabled (other ranks, or no tensorboard)."""

    def __init__(self, run_dir: Path, resume_step: int | None = None, enabled: bool = True) -> None:
        self.folder = Path(run_dir) / FOLDER
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warn("the tensorboard package is missing (pip install tensorboard): this run writes no event files")
            return
        purge = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=purge, flush_secs=30)

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def scalars(self, step: int, row: Mapping[str, Any]) -> None:
        """Every numeric column of a metrics row, as its tag (see `scalar_tag`)."""
        if self.writer is None:
            return
        for column, value in row.items():
            tag = scalar_tag(column)
            number = _finite(value)
            if tag is not None and number is not None:
                self.writer.add_scalar(tag, number, step)

    def learning_rates(self, step: int, rates: Mapping[str, float]) -> None:
        """``lr/<name>`` for each optimiser's current learning rate."""
        if self.writer is None:
            return
        for name, value in rates.items():
            self.writer.add_scalar(f"lr/{name}", float(value), step)

    def grid(self, step: int, png: Path) -> None:
        """The sample grid saved at ``png`` and its captions (the .txt beside it)."""
        if self.writer is None or not png.is_file():
            return
        import numpy as np
        from PIL import Image

        with Image.open(png) as img:
            pixels = np.asarray(img.convert("RGB"))
        self.writer.add_image("samples", pixels, step, dataformats="HWC")
        captions = png.with_suffix(".txt")
        if captions.is_file():
            lines = captions.read_text(encoding="utf-8").splitlines()
            # TensorBoard renders text as Markdown: two trailing spaces keep one caption per line.
            self.writer.add_text("samples/captions", "  \n".join(lines), step)

    def hparams(self, settings: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
        """Settings and final metrics of an ablation cell, for TensorBoard's HParams view (in tensorboard/hparams)."""
        if self.writer is None:
            return
        values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in settings.items()}
        finals = {f"final/{k}": n for k, v in metrics.items() if (n := _finite(v)) is not None}
        self.writer.add_hparams(values, finals, run_name="hparams")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Tag -> [(step, value)] as TensorBoard shows them (purged steps dropped); for tests and reports."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
