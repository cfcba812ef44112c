"""The CUDA check: does ratlip work on this GPU, end to end, in one command (< 8 minutes on one GPU)?

    python benchmarks/gpu_check.py                    # everything, on cuda:0; work files in a temp folder
    python benchmarks/gpu_check.py --out gpu-check    # keep the runs, logs, gpu_check.csv and gpu_check.md
    python benchmarks/gpu_check.py --inception FILE   # another Inception copy for the eval stage (default: ratlip's)
    python benchmarks/gpu_check.py --deadline 330     # start no stage after 330 s (the rest SKIP; table still written)

Stages (each a separate `ratlip` process, as a user would run it; logs in OUT/logs/STAGE.log):

    prepare-shapes-304      the synthetic shapes data stored at 304 px (the paper's CUB setting)
    tiny-{fp32,bf16,fp16}   `ratlip train tiny` for 4 steps in each precision
    cub-{fp32,bf16,fp16}    the full cub-size model (random ViT-B/32 CLIP, batch 64, 256 px crops of
                            the 304 px shapes data) for 3 steps in each precision
    torchrun-{tiny,cub}     the same in bf16 through torchrun with one process (NCCL process group;
                            note `ratlip train --gpus 1` itself trains in-process without torchrun)
    kill-resume             a tiny run killed with SIGKILL after its first checkpoint, resumed with
                            `ratlip train --resume` 20 steps past that checkpoint: it must end there, with
                            one metrics.csv row per step and no step twice
    sample                  `ratlip sample` from the cub-bf16 run on the GPU
    eval-inception          `ratlip eval` of the cub-bf16 run with Inception-V3 features on the GPU
                            (256 images; random CLIP weights: its numbers mean nothing, it checks the path)
    bench-cub               `ratlip bench cub --batch-sizes 64 --precision bf16 --train-batch-size 64`

It prints one table (stage, PASS/FAIL, seconds, what was measured or the error) and exits 1 when any
stage failed, 0 when all passed, 3 when there is no CUDA device (nothing is run then). A stage passes
when its process exits 0 and its output checks out (finite losses in metrics.csv, the export written,
the grid written, the eval row present, the bench CSV rows present).

`--device cpu --only STAGE,...` runs stages on the CPU: the test suite uses it to check this script's
plumbing; it proves nothing about CUDA.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

PROMPT = "a big red circle on a blue background"
TIME_BUDGET_S = 8 * 60


@dataclass
class Result:
    """One row of the table."""

    stage: str
    status: str  # PASS, FAIL or SKIP
    seconds: float
    detail: str


@dataclass
class Context:
    """Where the stages write and what they share."""

    out: Path
    device: str
    inception: str | None
    python: str = sys.executable
    results: dict[str, Result] = field(default_factory=dict)

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def ratlip(self, *args: str) -> list[str]:
        return [self.python, "-m", "ratlip_cli", *args]

    def torchrun(self, *args: str) -> list[str]:
        return [self.python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                "-m", "ratlip_cli", *args]


class StageFailed(Exception):
    """A stage's process failed or its output did not check out (the message goes into the table)."""


# ----------------------------------------------------------------------------- running processes


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["COLUMNS"] = "200"  # log lines unwrapped
    return env


def _last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln]
    return (errors or lines or ["(no output)"])[-1][:300]


def run(ctx: Context, name: str, argv: list[str], timeout: float) -> Path:
    """Run one command with its output in logs/NAME.log; a non-zero exit or a timeout raises StageFailed."""
    ctx.logs.mkdir(parents=True, exist_ok=True)
    log = ctx.logs / f"{name}.log"
    with open(log, "a", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(argv) + "\n")
        fh.flush()
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise StageFailed(f"timed out after {timeout:.0f} s (log: {log})") from None
    if code != 0:
        raise StageFailed(f"exit {code}: {_last_line(log)}")
    return log


# ----------------------------------------------------------------------------- checks of outputs


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise StageFailed(f"{path} was not written")
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def check_training(run_dir: Path, steps: int) -> str:
    """The run reached `steps`, logged finite losses and exported its generator; returns images/s."""
    rows = [r for r in metrics_rows(run_dir) if r.get("d_loss", "") != ""]
    if not rows:
        raise StageFailed("metrics.csv has no row with losses (every step skipped?)")
    bad = [r["step"] for r in rows if not all(math.isfinite(float(r[k])) for k in ("d_loss", "g_loss", "ma_gp"))]
    if bad:
        raise StageFailed(f"non-finite losses at steps {','.join(bad)}")
    last = int(metrics_rows(run_dir)[-1]["step"])
    if last != steps:
        raise StageFailed(f"the last logged step is {last}, not {steps}")
    if not (run_dir / "export" / "generator.safetensors").is_file():
        raise StageFailed("export/generator.safetensors was not written")
    rates = [float(r["images_per_s"]) for r in rows[1:] if r.get("images_per_s")]  # step 1 includes warm-up
    return f"{steps} steps, {statistics.median(rates):.1f} img/s after step 1" if rates else f"{steps} steps"


# ----------------------------------------------------------------------------- the stages


def _train_sets(ctx: Context, name: str, steps: int, *extra: str) -> list[str]:
    sets = [f"train.runs_dir={ctx.runs}", f"train.name={name}", f"train.max_steps={steps}", "train.log_every=1",
            "train.sample_every=0", "train.checkpoint_every=0", *extra]
    return [a for s in sets for a in ("--set", s)]


def _tiny_sets(ctx: Context) -> list[str]:
    return [f"data.root={ctx.out / 'data' / 'tiny'}"]


def _cub_sets(ctx: Context) -> list[str]:
    return ["clip.weights=random", "data.name=shapes", f"data.root={ctx.out / 'data' / 'shapes304'}",
            "data.num_workers=4", "train.global_batch=0"]  # steps of one batch of 64, not the release's 512


PRECISION_FLAGS = {"fp32": "fp32", "bf16": "amp_bf16", "fp16": "amp_fp16"}


def stage_prepare(ctx: Context) -> str:
    root = ctx.out / "data" / "shapes304"
    run(ctx, "prepare-shapes-304", ctx.ratlip("prepare", "shapes", "--size", "304", "--out", str(root), "--workers", "8"), 240)
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    return f"{root} ({manifest.get('total', '?')} images)"


def train_stage(model: str, precision: str, launcher: str = "ratlip") -> Callable[[Context], str]:
    steps = 4 if model == "tiny" else 3

    def stage(ctx: Context) -> str:
        name = f"{'torchrun' if launcher == 'torchrun' else model}-{model if launcher == 'torchrun' else precision}"
        sets = _train_sets(ctx, name, steps, *(_tiny_sets(ctx) if model == "tiny" else _cub_sets(ctx)))
        args = ["train", model, *sets, "--device", ctx.device, "--precision", PRECISION_FLAGS[precision]]
        argv = ctx.torchrun(*args) if launcher == "torchrun" else ctx.ratlip(*args)
        run(ctx, name, argv, 120 if model == "tiny" else 240)
        return check_training(ctx.runs / name, steps)

    return stage


def stage_kill_resume(ctx: Context) -> str:
    name = "kill-resume"
    run_dir = ctx.runs / name
    sets = _train_sets(ctx, name, 100000, *_tiny_sets(ctx))
    sets += ["--set", "train.checkpoint_every=10", "--set", "train.keep_checkpoints=3"]
    ctx.logs.mkdir(parents=True, exist_ok=True)
    log = ctx.logs / f"{name}.log"
    argv = ctx.ratlip("train", "tiny", *sets, "--device", ctx.device)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(argv) + "\n")
        fh.flush()
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
        deadline = time.monotonic() + 180
        while not list((run_dir / "checkpoints").glob("ckpt-*.pt")):
            if proc.poll() is not None:
                raise StageFailed(f"the run ended (exit {proc.returncode}) before its first checkpoint: {_last_line(log)}")
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                raise StageFailed("no checkpoint within 180 s")
            time.sleep(0.05)
        time.sleep(0.5)  # let it train past the checkpoint, so the kill loses steps
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    newest = max(int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("ckpt-*.pt"))
    logged = int(metrics_rows(run_dir)[-1]["step"])
    target = newest + 20
    run(ctx, name, ctx.ratlip("train", "--resume", str(run_dir), "--set", f"train.max_steps={target}",
                              "--device", ctx.device), 180)
    steps = [int(r["step"]) for r in metrics_rows(run_dir) if r.get("d_loss", "") != ""]
    if steps != list(range(1, target + 1)):
        raise StageFailed(f"metrics.csv steps after resume are not 1..{target} once each")
    return f"killed at step >= {logged} (checkpoint {newest}), resumed to {target}: steps 1..{target} once each"


def stage_sample(ctx: Context) -> str:
    out = ctx.out / "grid.png"
    run(ctx, "sample", ctx.ratlip("sample", PROMPT, "--run", str(ctx.runs / "cub-bf16"), "--n", "4",
                                  "--device", ctx.device, "--out", str(out)), 180)
    from PIL import Image

    with Image.open(out) as img:
        return f"{out.name} {img.size[0]}x{img.size[1]}"


def stage_eval(ctx: Context) -> str:
    args = ["eval", "--run", str(ctx.runs / "cub-bf16"), "--num", "256", "--device", ctx.device,
            "--feature-extractor", "inception", "--json", "--quiet",
            "--set", "eval.clip_weights=random", "--set", f"eval.cache_dir={ctx.out / 'cache'}"]
    if ctx.inception:
        args += ["--inception", ctx.inception]
    log = run(ctx, "eval-inception", ctx.ratlip(*args), 300)
    rows = [ln for ln in log.read_text(encoding="utf-8").splitlines() if ln.startswith("{")]
    if not rows:
        raise StageFailed("no JSON result line")
    row = json.loads(rows[-1])
    if row.get("feature_extractor") != "inception" or not math.isfinite(float(row["fid"])):
        raise StageFailed(f"unexpected result: extractor {row.get('feature_extractor')}, fid {row.get('fid')}")
    return f"{row['num_images']} images on {row['device']}, Inception FID {float(row['fid']):.1f} (real Inception; a 3-step random-CLIP generator: checks the path only)"


def stage_bench(ctx: Context) -> str:
    path = ctx.out / "bench-cub.csv"
    run(ctx, "bench-cub", ctx.ratlip("bench", "cub", "--batch-sizes", "64", "--precision", "bf16",
                                     "--train-batch-size", "64", "--device", ctx.device, "--csv", str(path)), 300)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise StageFailed("the bench CSV has no rows")
    parts = []
    for r in rows:
        label = f"h={r['hidden']} {r['phase']}"
        parts.append(f"{label} {float(r['images_per_s']):.0f} img/s" + (f", {float(r['peak_mem_mb']):.0f} MB"
                                                                        if r.get("peak_mem_mb") else ""))
    return "; ".join(parts)


STAGES: dict[str, tuple[Callable[[Context], str], tuple[str, ...]]] = {
    # name: (function, stages whose output it needs)
    "prepare-shapes-304": (stage_prepare, ()),
    **{f"tiny-{p}": (train_stage("tiny", p), ()) for p in ("fp32", "bf16", "fp16")},
    **{f"cub-{p}": (train_stage("cub", p), ("prepare-shapes-304",)) for p in ("fp32", "bf16", "fp16")},
    "torchrun-tiny": (train_stage("tiny", "bf16", "torchrun"), ()),
    "torchrun-cub": (train_stage("cub", "bf16", "torchrun"), ("prepare-shapes-304",)),
    "kill-resume": (stage_kill_resume, ()),
    "sample": (stage_sample, ("cub-bf16",)),
    "eval-inception": (stage_eval, ("cub-bf16",)),
    "bench-cub": (stage_bench, ()),
}


# ----------------------------------------------------------------------------- the table


def run_stages(ctx: Context, names: list[str], stages=None, deadline: float | None = None) -> list[Result]:
    """Run the named stages in order; a stage whose input failed or was not run is skipped, and so is
    every stage that would start after `deadline` (a `time.monotonic()` value), so the table still gets written."""
    stages = STAGES if stages is None else stages
    results = []
    for name in names:
        fn, needs = stages[name]
        missing = [n for n in needs if ctx.results.get(n) is None or ctx.results[n].status != "PASS"]
        if deadline is not None and time.monotonic() >= deadline:
            res = Result(name, "SKIP", 0.0, "out of time (--deadline)")
        elif missing:
            res = Result(name, "SKIP", 0.0, f"needs {', '.join(missing)}")
        else:
            start = time.monotonic()
            try:
                res = Result(name, "PASS", 0.0, fn(ctx))
            except StageFailed as exc:
                res = Result(name, "FAIL", 0.0, str(exc))
            except Exception as exc:  # a bug in a check must still end up in the table
                res = Result(name, "FAIL", 0.0, f"{type(exc).__name__}: {exc}")
            res.seconds = time.monotonic() - start
        ctx.results[name] = res
        results.append(res)
        sys.stdout.write(f"{res.status} {name} ({res.seconds:.0f} s): {res.detail}\n")
        sys.stdout.flush()
    return results


def device_line(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        return (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}; "
                f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    return f"CPU ({os.cpu_count()} cores); torch {torch.__version__} -- a plumbing check, not a CUDA check"


def markdown_table(results: list[Result], device: str, total: float) -> str:
    lines = [f"GPU check on {device}; {total:.0f} s in all (`python benchmarks/gpu_check.py`).", "",
             "| stage | result | seconds | measured / error |", "|---|---|---:|---|"]
    for r in results:
        lines.append(f"| {r.stage} | {r.status} | {r.seconds:.0f} | {r.detail.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def print_table(results: list[Result], device: str, total: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ratlip GPU check: {device}", caption=f"{total:.0f} s in all")
    for col, justify in (("stage", "left"), ("result", "left"), ("s", "right"), ("measured / error", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    colour = {"PASS": "green", "FAIL": "red", "SKIP": "yellow"}
    for r in results:
        table.add_row(r.stage, f"[{colour[r.status]}]{r.status}[/]", f"{r.seconds:.0f}", r.detail)
    Console(width=160).print(table)


def no_cuda_message() -> str | None:
    """Why CUDA cannot be used here, or None when it can."""
    import torch

    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA support (a CPU-only build)"
    return (f"gpu_check: no CUDA GPU is visible to torch {torch.__version__} ({build}; torch.cuda.is_available() is "
            "False). This check needs one NVIDIA GPU with a working driver; nothing was run. "
            "(--device cpu --only STAGE,... runs stages on the CPU to test this script, not CUDA.)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="work folder to keep (default: a temporary folder, deleted)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (plumbing test only)")
    parser.add_argument("--inception", help="Inception weights file for eval-inception (else ratlip's default source)")
    parser.add_argument("--only", help=f"comma-separated stages (default: all): {','.join(STAGES)}")
    parser.add_argument("--deadline", type=float, metavar="SECONDS",
                        help="start no stage after this many seconds (those left are SKIP; the table is still written)")
    args = parser.parse_args(argv)

    names = list(STAGES) if not args.only else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        sys.stderr.write(f"gpu_check: unknown stage {', '.join(unknown)}; stages: {', '.join(STAGES)}\n")
        return 2
    if args.device.startswith("cuda"):
        message = no_cuda_message()
        if message:
            sys.stderr.write(message + "\n")
            return 3
    with tempfile.TemporaryDirectory(prefix="ratlip-gpu-check-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        ctx = Context(out=out.resolve(), device=args.device, inception=args.inception)
        device = device_line(args.device)
        sys.stdout.write(f"gpu_check on {device}; work folder {ctx.out}\n")
        start = time.monotonic()
        results = run_stages(ctx, names, deadline=None if args.deadline is None else start + args.deadline)
        total = time.monotonic() - start
        print_table(results, device, total)
        table = markdown_table(results, device, total)
        (ctx.out / "gpu_check.md").write_text(table, encoding="utf-8")
        with open(ctx.out / "gpu_check.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["stage", "result", "seconds", "detail"])
            writer.writerows([r.stage, r.status, f"{r.seconds:.1f}", r.detail] for r in results)
        if args.out:
            sys.stdout.write(f"wrote {ctx.out / 'gpu_check.md'} and gpu_check.csv\n")
        if total > TIME_BUDGET_S and len(names) == len(STAGES):
            sys.stdout.write(f"note: {total:.0f} s is over the {TIME_BUDGET_S} s target\n")
    failed = [r for r in results if r.status != "PASS"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
