"""The run directory `runs/<name>/`: resolved config, metrics CSV, sample grids, checkpoints, export.

::

    runs/<name>/
      config.yaml            resolved config (rewritten on resume when budget keys change)
      metrics.csv            one row per log interval (and per in-training evaluation)
      samples/step-XXXXXXXX.png + .txt   EMA generator, fixed noise, fixed train/test captions
      checkpoints/ckpt-XXXXXXXX.pt       the newest `train.keep_checkpoints`
      export/generator.safetensors + generator.json   the EMA generator for `ratlip sample`
      clip.safetensors       the frozen CLIP, when the run used random CLIP weights
      tensorboard/           TensorBoard event files (ratlip_cli/train/tensorboard.py)
      environment.json       versions, machine and devices of the (latest) training process
      train.lock             while a trainer writes the run: its pid and host (one writer per run)

Only rank 0 writes here.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ratlip_cli.config import Config
from ratlip_cli.environment import environment
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import write_csv, write_text
from ratlip_cli.grid import DISPLAY_SIZE, render_grid, save_image, to_uint8
from ratlip_cli.train.lock import RunLock
from ratlip_cli.run_columns import EVAL_COLUMNS, TIMING_COLUMNS, metrics_columns  # noqa: F401  (re-exported)


@dataclass
class RunPaths:
    """Paths inside one run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def clip(self) -> Path:
        return self.root / "clip.safetensors"

    def make(self) -> None:
        for p in (self.root, self.samples, self.checkpoints, self.export):
            p.mkdir(parents=True, exist_ok=True)


def default_run_name(cfg: Config) -> str:
    """``train.name`` or ``<preset>-<YYYYmmdd-HHMMSS>``."""
    if cfg.train.name:
        return cfg.train.name
    return f"{cfg.preset or 'custom'}-{time.strftime('%Y%m%d-%H%M%S')}"


def claim_run(root: Path) -> RunLock:
    """Lock an existing run folder for this process (one writer per run; see `ratlip_cli.train.lock`)."""
    return RunLock(root).acquire()


def claim_new_run(cfg: Config) -> tuple[RunPaths, RunLock]:
    """Paths and lock of a new run; refuses a directory that already holds a run."""
    paths = RunPaths(Path(cfg.train.runs_dir) / default_run_name(cfg))
    lock = RunLock(paths.root).acquire()
    if paths.metrics.exists() or any(paths.checkpoints.glob("ckpt-*.pt")):
        lock.release()
        raise RatlipError(
            f"run directory {paths.root} already holds a run; continue it with "
            f"`ratlip train --resume {paths.root}` or choose another --set train.name=..."
        )
    return paths, lock


class MetricsLog:
    """Append-only CSV of training metrics (rank 0); ``loss_columns`` come from the family's step."""

    def __init__(self, path: Path, loss_columns: tuple[str, ...] | list[str]) -> None:
        self.path = path
        self.columns = metrics_columns(loss_columns)

    def start(self, keep_until_step: int | None = None) -> None:
        """Create the file with its header, or, on resume, drop rows logged after ``keep_until_step``."""
        kept: list[dict[str, str]] = []
        if keep_until_step is not None and self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            kept = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= keep_until_step]
        write_csv(self.path, self.columns, ([r.get(k, "") for k in self.columns] for r in kept))

    def write(self, row: dict) -> None:
        """Append one row (missing columns are left empty); a resume drops rows past its checkpoint."""
        try:
            with open(self.path, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n").writerow(
                    {k: _fmt(row.get(k, "")) for k in self.columns}
                )
        except OSError as exc:
            raise RatlipError(f"cannot append to {self.path}: {exc.strerror or exc}") from None


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    """The rows of a metrics.csv as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def save_sample_grid(images: torch.Tensor, captions: list[str], path: Path, ncols: int) -> None:
    """Save ``images`` (N, 3, H, W) in [-1, 1], N a multiple of ``ncols``, as a PNG grid of rows of
    ``ncols`` images (`grid.render_grid`, no label strips, small images enlarged to `grid.DISPLAY_SIZE`)
    and the captions, cell by cell, beside it."""
    pixels = to_uint8(images)
    ncols = max(1, ncols)
    grid = render_grid(pixels.view(pixels.shape[0] // ncols, ncols, *pixels.shape[1:]), display_size=DISPLAY_SIZE)
    lines = [f"row {i // ncols + 1}, col {i % ncols + 1}: {c}" for i, c in enumerate(captions)]
    write_text(path.with_suffix(".txt"), "\n".join(lines) + "\n")
    save_image(grid, path)


def write_environment(root: Path, device: torch.device, world_size: int) -> None:
    """`environment.json`: where the run (its latest start) trained, for `ratlip report` (rank 0)."""
    import json


    env = {**environment(), "device": str(device), "processes": str(world_size)}
    write_text(root / "environment.json", json.dumps(env, indent=1) + "\n")
