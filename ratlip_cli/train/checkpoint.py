"""Complete, versioned training checkpoints, written atomically and validated when read back.

A checkpoint is a `torch.save` dict of tensors and plain Python values only (so it loads with
``torch.load(..., weights_only=True)``): trainable weights of G, D and the head, the EMA, both
optimisers, the GradScaler, step/epoch/data position, every RNG state, the resolved config and
the package version.

Writing: `ratlip_cli.files.torch_save` (temp file in the same folder, fsync, `os.replace`, fsync
of the folder); only then are checkpoints beyond the newest ``keep`` deleted. A crash at any moment
leaves the previous checkpoints intact, and a half-written file never carries a checkpoint's name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ratlip_cli import __version__
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import WriteError, remove_stale_temps, torch_save
from ratlip_cli.rng import capture_rng, restore_rng  # noqa: F401  (re-exported: a checkpoint holds them)

FORMAT = "ratlip-checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{8,})\.pt$")
REQUIRED = ("format", "format_version", "step", "epoch", "config", "generator", "discriminator", "head",
            "ema", "opt_g", "opt_d", "rng")


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint after ``step`` optimiser steps."""
    return f"ckpt-{step:08d}.pt"


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every file named like a checkpoint in ``folder``, oldest first (not validated)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate one checkpoint (``weights_only=True``); raises ValueError if it is unusable."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, I/O error: all mean "not usable"
        raise ValueError(f"{path.name} cannot be read ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path.name} is not a ratlip checkpoint")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise ValueError(f"{path.name} lacks {', '.join(missing)}")
    if state["format_version"] > FORMAT_VERSION:
        raise ValueError(f"{path.name} has format version {state['format_version']}; this ratlip reads <= {FORMAT_VERSION}")
    m = _NAME.match(path.name)
    if m and int(m.group(1)) != int(state["step"]):
        raise ValueError(f"{path.name} holds step {state['step']}, not the step in its name")
    return state


def latest_checkpoint(
    folder: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict[str, Any]] | tuple[None, None]:
    """The newest checkpoint in ``folder`` that loads and validates, with its state; (None, None) if none.

    A truncated or corrupt newer file is skipped (never picked), so a crash mid-write costs at most
    the steps since the previous checkpoint.
    """
    for _step, path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path, map_location)
        except ValueError:
            continue
    return None, None


def save_checkpoint(state: dict[str, Any], folder: str | Path, keep: int) -> Path:
    """Write ``state`` as ``folder/ckpt-<step>.pt`` atomically, then delete all but the newest ``keep``."""
    folder = Path(folder)
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, "ratlip_version": __version__, **state}
    path = folder / checkpoint_name(int(state["step"]))
    try:
        torch_save(state, path)
    except WriteError as exc:
        previous = list_checkpoints(folder)
        kept = f"{previous[-1][1].name} is intact" if previous else "no earlier checkpoint exists"
        raise RatlipError(
            f"{exc}; the checkpoint of step {state['step']} was not saved and {kept}: "
            f"fix the cause, then `ratlip train --resume {folder.parent}`"
        ) from None
    prune_checkpoints(folder, keep, protect=path)
    return path


def prune_checkpoints(folder: str | Path, keep: int, protect: Path | None = None) -> None:
    """Delete all but the newest ``keep`` checkpoints (never ``protect``) and stale temp files."""
    folder = Path(folder)
    ckpts = list_checkpoints(folder)
    keep = max(1, int(keep))
    for _step, path in ckpts[:-keep]:
        if protect is not None and path == protect:
            continue
        try:
            path.unlink()
        except OSError:
            pass
    remove_stale_temps(folder)
