"""Does `ratlip train shapes` learn on a CPU? Train, snapshot after 5 and 15 minutes, score held-out captions.

Two sub-commands (rerunnable; nothing here is a test):

    # train the shapes preset for 5 minutes, snapshot the export, resume to 15 minutes, score both
    python benchmarks/shapes_learning.py run --name shapes-bench [--set KEY=VALUE ...] [--minutes 5,15]

    # score any export (a run directory, an export folder or a generator.safetensors)
    python benchmarks/shapes_learning.py score runs/shapes-bench [--num 0] [--seed 0]

    # learning curves of one or more runs (one line per run/seed): colour, shape, background and
    # all three vs images seen, from the runs' in-training evaluation (metrics.csv eval_* columns:
    # EMA generator, every test caption), with the issue-13 targets dashed
    python benchmarks/shapes_learning.py plot runs/shapes-bench [runs/other ...] --out docs/images/shapes-curves.png

Scoring: the EMA generator draws one image per test-split image (its caption's phrasing rotating,
each with its own fixed noise); the data module's shapes checker decides whether the image's main
colour, shape and background match the caption. Reported for all test captions and for the 6
(colour, shape, background) combinations never seen in training ("novel"), with chance levels.
Training minutes are the run's own training-loop time (metrics.csv `elapsed_s`), which includes
sample grids and checkpoints but not process start-up.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch


def score(path: str | Path, num: int = 0, seed: int = 0, device: str = "cpu") -> dict:
    """Match rates of an export's EMA generator on the test split (all captions and novel combos only)."""
    from ratlip_cli.data import load_prepared
    from ratlip_cli.export import load_generator, noise_dim
    from ratlip_cli.train.shapes_eval import score_generator_on_shapes, shapes_eval_captions

    loaded = load_generator(path, device)
    prepared = load_prepared(loaded.cfg.data.root)
    out = {"export": str(path), "step": loaded.step, "images_seen": loaded.images_seen}
    for label, novel in (("all", False), ("novel", True)):
        caps = shapes_eval_captions(prepared, "test", num, novel_only=novel)
        res = score_generator_on_shapes(
            loaded.generator, loaded.embed, caps, noise_dim(loaded),
            device=device, seed=seed, batch_size=64, distributed=False,
        )
        out[label] = {k: round(res[k], 4) for k in ("colour", "shape", "background", "size", "all")} | {"n": res["n"]}
        out["chance"] = {k: round(v, 4) for k, v in res["chance"].items()}
    return out


def _last_row(run: Path) -> dict:
    from ratlip_cli.train.run import read_metrics

    rows = read_metrics(run / "metrics.csv")
    return rows[-1] if rows else {}


def _mean_rate(run: Path) -> float:
    """Mean images/s over the run's logged intervals (training steps and data loading only)."""
    from ratlip_cli.train.run import read_metrics

    rates = [float(r["images_per_s"]) for r in read_metrics(run / "metrics.csv") if r.get("images_per_s")]
    return sum(rates) / len(rates) if rates else 0.0


def run(args: argparse.Namespace) -> int:
    minutes = [float(m) for m in args.minutes.split(",")]
    runs_dir = Path(args.runs_dir)
    run_dir = runs_dir / args.name
    base = [sys.executable, "-m", "ratlip_cli", "train"]
    sets = [f"train.runs_dir={runs_dir}", f"train.name={args.name}", *args.set]
    from ratlip_cli.bench import matmul_gflops

    # The VM's speed drifts from hour to hour: record its fp32 matmul rate before and after the run.
    report = {"name": args.name, "sets": args.set, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "matmul_gflops_before": round(matmul_gflops(torch.device("cpu"), "fp32"), 1), "snapshots": []}
    for m in minutes:
        # Rerunnable: an existing run is resumed (and one already past `m` minutes is not retrained).
        snap = run_dir / f"export-{m:g}min"  # beside export/, so its "../clip.safetensors" still resolves
        if (run_dir / "checkpoints").is_dir():
            if snap.is_dir() and float(_last_row(run_dir).get("elapsed_s") or 0) >= m * 60:
                print(f"snapshot {snap} exists; scoring it again", flush=True)
                report["snapshots"].append(score(snap, args.num, args.seed) | {"minutes": m})
                continue
            cmd = base + ["--resume", str(run_dir), "--set", f"train.max_minutes={m}"]
        else:
            cmd = base + ["shapes"] + [x for s in sets + [f"train.max_minutes={m}"] for x in ("--set", s)]
        print("$", " ".join(cmd), flush=True)
        t0 = time.time()
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            return proc.returncode
        if snap.exists():
            shutil.rmtree(snap)
        shutil.copytree(run_dir / "export", snap)
        row = _last_row(run_dir)
        result = score(snap, args.num, args.seed)
        result.update(minutes=m, wall_s=round(time.time() - t0, 1), last_row_step=int(row.get("step", 0) or 0),
                      last_row_elapsed_s=row.get("elapsed_s"), mean_images_per_s=round(_mean_rate(run_dir), 1))
        report["snapshots"].append(result)
        print(json.dumps(result, indent=2), flush=True)
    report["matmul_gflops_after"] = round(matmul_gflops(torch.device("cpu"), "fp32"), 1)
    (run_dir / "bench-report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {run_dir / 'bench-report.json'}")
    return 0


TARGETS = {"eval_colour": 0.95, "eval_shape": 0.80, "eval_background": 0.90, "eval_all": 0.70}
CHANCE = {"eval_colour": 1 / 6, "eval_shape": 1 / 3, "eval_background": 1 / 3, "eval_all": 1 / 54}


def plot(runs: list[str], out: str, title: str = "") -> None:
    """Four panels (colour, shape, background, all three) of match rate vs images seen, one line per run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ratlip_cli.train.run import read_metrics

    fig = Figure(figsize=(10, 6.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, col in zip(axes, TARGETS):
        for run in runs:
            rows = [r for r in read_metrics(Path(run) / "metrics.csv") if r.get(col) not in (None, "")]
            if rows:
                ax.plot([int(r["images"]) for r in rows], [float(r[col]) for r in rows], marker=".", label=Path(run).name)
        ax.axhline(TARGETS[col], color="tab:green", ls="--", lw=1, label=f"target {TARGETS[col]:.2f}")
        ax.axhline(CHANCE[col], color="gray", ls=":", lw=1, label="chance")
        ax.set_title(col.replace("eval_", "") + (" three" if col == "eval_all" else ""), fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[2:]:
        ax.set_xlabel("training images seen")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title or "shapes: held-out test captions, EMA generator", fontsize=10)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="train the shapes preset with snapshots and score them")
    p_run.add_argument("--name", default="shapes-bench")
    p_run.add_argument("--runs-dir", default="runs")
    p_run.add_argument("--minutes", default="5,15", help="training-time snapshots, comma-separated (default 5,15)")
    p_run.add_argument("--set", action="append", default=[], help="extra config override for the run (repeatable)")
    p_run.add_argument("--num", type=int, default=0, help="captions to score (0: one per test image)")
    p_run.add_argument("--seed", type=int, default=0)
    p_score = sub.add_parser("score", help="score an export")
    p_score.add_argument("path")
    p_score.add_argument("--num", type=int, default=0)
    p_score.add_argument("--seed", type=int, default=0)
    p_plot = sub.add_parser("plot", help="learning curves of runs into a PNG")
    p_plot.add_argument("runs", nargs="+")
    p_plot.add_argument("--out", default="docs/images/shapes-curves.png")
    p_plot.add_argument("--title", default="")
    args = parser.parse_args(argv)
    if args.cmd == "plot":
        plot(args.runs, args.out, args.title)
        return 0
    if args.cmd == "run":
        return run(args)
    print(json.dumps(score(args.path, args.num, args.seed), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
