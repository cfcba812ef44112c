"""`ratlip eval --checkpoints last|all|best`: score a run's retained checkpoints, and export the best.

GALIP and RATLIP evaluate every `test_interval` epochs and report the best epoch; this scores each
retained checkpoint (its EMA or raw generator, `eval.generator`) with the same protocol and images
as the run's export, one row per checkpoint in eval.csv (`checkpoint`, `step`), and with `best`
writes the lowest-FID checkpoint's generators to `runs/NAME/export-best/` with `selected.json`
saying which metric, protocol and value chose it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ratlip_cli import dist
from ratlip_cli.console import console
from ratlip_cli.errors import RatlipError
from ratlip_cli.evaluate import EvalOptions, eval_settings, evaluate_run
from ratlip_cli.evaluate.output import report
from ratlip_cli.export import export_weights_like
from ratlip_cli.files import write_json
from ratlip_cli.profiling import tune_cpu_allocator
from ratlip_cli.train.checkpoint import list_checkpoints, load_checkpoint

CHOICES = ("export", "last", "all", "best")
SELECT_METRIC = "fid"
BEST_DIR = "export-best"


def retained(run_dir: Path, which: str) -> list[tuple[int, Path]]:
    """The checkpoints `--checkpoints which` scores, oldest first; a one-line error when there are none."""
    if which not in CHOICES:
        raise RatlipError(f"--checkpoints must be one of {', '.join(CHOICES)}, got {which!r}")
    found = list_checkpoints(run_dir / "checkpoints")
    if not found:
        raise RatlipError(f"{run_dir} has no checkpoints to score; use --checkpoints export (the default)")
    return found[-1:] if which == "last" else found


def checkpoint_state(path: Path) -> dict[str, Any]:
    """A checkpoint's generator states, step and images seen (validated)."""
    try:
        state = load_checkpoint(path)
    except ValueError as exc:
        raise RatlipError(f"cannot score {path}: {exc}") from None
    return {"generator": state["generator"], "ema": state["ema"], "step": int(state["step"]),
            "images": int(state.get("images", 0)), "name": path.name}


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row with the lowest FID; an error when no row has one."""
    scored = [r for r in rows if isinstance(r.get(SELECT_METRIC), (int, float))]
    if not scored:
        raise RatlipError("--checkpoints best selects by FID, but the rows have none; include fid in --metrics")
    return min(scored, key=lambda r: float(r[SELECT_METRIC]))


def export_best(run_dir: Path, row: dict[str, Any], path: Path) -> Path:
    """Write checkpoint ``path``'s EMA and raw generators as runs/NAME/export-best/ (the run's export with
    these weights) and `selected.json` naming the metric, protocol and value that chose it."""
    out = run_dir / BEST_DIR
    state = checkpoint_state(path)
    label = {"selected_by": SELECT_METRIC, "value": row[SELECT_METRIC], "lower_is_better": True,
             "protocol": row.get("protocol", ""), "generator": row.get("generator", ""),
             "checkpoint": path.name, "step": state["step"], "images": state["images"],
             "eval_row_time": row.get("time", "")}
    export_weights_like(run_dir / "export", out, state["ema"], state["generator"], state["step"], state["images"],
                        extra={"selected": label})
    write_json(out / "selected.json", label)
    return out


def score_checkpoints(run_dir: Path, settings: dict[str, Any], opts: EvalOptions, as_json: bool = False) -> dict[str, Any]:
    """What `ratlip eval --run R --checkpoints last|all|best` does: one row per checkpoint (eval.csv), printed;
    `best` exports the lowest-FID one. Returns the last row (best: the chosen one)."""
    if opts.save_images:
        raise RatlipError("--save-images scores one generator; use it without --checkpoints")
    tune_cpu_allocator(True)
    settings = eval_settings(settings)
    run_dir = Path(run_dir).expanduser()
    found = retained(run_dir, opts.checkpoints)
    rows = []
    try:
        for _, path in found:
            rows.append(evaluate_run(run_dir, settings, opts, checkpoint=checkpoint_state(path)))
            if int(os.environ.get("RANK", "0")) == 0:
                report(rows[-1], as_json)
    finally:
        dist.destroy()
    if opts.checkpoints != "best":
        return rows[-1]
    best = best_row(rows)
    if int(os.environ.get("RANK", "0")) == 0:
        out = export_best(run_dir, best, run_dir / "checkpoints" / best["checkpoint"])
        console.print(f"best checkpoint by FID ({best.get('protocol', '')}): {best['checkpoint']} (step {best['step']}, "
                      f"FID {float(best['fid']):.3f}); exported to {out}", highlight=False)
    return best


