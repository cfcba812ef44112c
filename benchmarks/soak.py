"""Soak test: a CPU training run killed with SIGKILL and SIGTERM at random moments and resumed each
time must end with the same exported weights as an uninterrupted run with the same seed.

Not part of CI (it runs for minutes to hours). What it does:

1. the reference: `ratlip train PRESET --set train.max_steps=STEPS ...` once, uninterrupted;
2. the soak run: the same command, killed after a random delay with SIGKILL or SIGTERM (chosen at
   random, both at least --kills // 4 times), then continued with `ratlip train --resume` (or
   started again when it died before its first checkpoint), until --kills kills are done; then it
   runs to the end. A fraction --startup-kills of the kills lands at a random moment of the start
   (imports, lock, loading; uniform in 0..--gap's MAX seconds); the others land uniform in --gap
   seconds after the trainer's first "step N/M" log line (steps, sample grids, checkpoint and
   export writes), so a slow start on a loaded machine does not swallow them;
3. compares export/generator.safetensors byte for byte (and the sha256 in generator.json), every
   tensor of the final checkpoint's training state, and metrics.csv without its timing columns.

Exit code 0 when everything is equal, 1 otherwise; a JSON summary is printed and written to
OUT/soak.json. With --parallel the reference trains at the same time (its own log: OUT/reference.log);
with --by-step each training kill waits for a random step target (spread over the run) and then
--gap seconds, so all kills land before the end whatever the machine's speed. Example (the
30-minute version needs a STEPS that makes the run take 30 min; the reference's time is printed):

    python benchmarks/soak.py --steps 600 --kills 10 --gap 4,20 --out /tmp/soak
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train_cmd(preset: str, runs: Path, data: Path, name: str, steps: int, extra: list[str]) -> list[str]:
    sets = [f"train.runs_dir={runs}", f"data.root={data}", f"train.name={name}", f"train.max_steps={steps}",
            "train.epochs=0", "train.max_minutes=0", *extra]
    return [sys.executable, "-m", "ratlip_cli", "train", preset, *[a for s in sets for a in ("--set", s)]]


def run_env(threads: int) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


class _Watcher(threading.Thread):
    """Copies a trainer's output to the log and notes when it says it runs."""

    def __init__(self, proc: subprocess.Popen, log) -> None:
        super().__init__(daemon=True)
        self.proc, self.log, self.seen, self.step = proc, log, threading.Event(), -1

    def run(self) -> None:
        for line in self.proc.stdout:
            self.log.write(line)
            if line.startswith(b"step "):  # a logged step: the loop runs (and has reached that step)
                self.seen.set()
                self.step = int(line.split(b"/")[0].split()[1])
        self.log.flush()


def _watch(proc: subprocess.Popen, log) -> _Watcher:
    watcher = _Watcher(proc, log)
    watcher.start()
    return watcher


def has_checkpoint(run: Path) -> bool:
    return _latest_step(run) is not None


def soak(args: argparse.Namespace) -> dict:
    out = Path(args.out).resolve()
    runs, data = out / "runs", out / "data"
    env = run_env(args.threads)
    rng = random.Random(args.kill_seed)
    lo, hi = (float(x) for x in args.gap.split(","))
    extra = [f"train.seed={args.seed}", f"train.checkpoint_every={args.checkpoint_every}", "train.keep_checkpoints=2",
             f"train.log_every={args.log_every}", f"train.sample_every={args.sample_every}", *args.set]
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "soak.log", "ab")

    # 1. the uninterrupted reference (with --parallel: started now, awaited before the comparison)
    t0 = t_ref = time.time()
    ref_cmd = train_cmd(args.preset, runs, data, "reference", args.steps, extra)
    reference_s: float | None = None
    reference: subprocess.Popen | None = None
    if not (runs / "reference" / "export" / "generator.json").is_file():
        if args.parallel:
            ref_log = open(out / "reference.log", "ab")
            reference = subprocess.Popen(ref_cmd, env=env, stdout=ref_log, stderr=subprocess.STDOUT)
            ref_end: list[float] = []  # when it exits (a thread notes it: the soak loop below is busy)
            threading.Thread(target=lambda: (reference.wait(), ref_end.append(time.time())), daemon=True).start()
            while not (data / "manifest.json").is_file() and reference.poll() is None:
                time.sleep(0.5)  # the reference generates the dataset; the soak run must not do it at once
            print("reference: started beside the soak run (--parallel)", flush=True)
        else:
            subprocess.run(ref_cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
            reference_s = time.time() - t0
            print(f"reference: {args.steps} steps in {reference_s:.0f} s", flush=True)
    else:
        print(f"reference: reusing {runs / 'reference'} (--keep)", flush=True)

    # 2. the soak run
    run = runs / "soak"
    kinds = [signal.SIGKILL, signal.SIGTERM]
    plan = [rng.choice(kinds) for _ in range(args.kills)]
    for i in range(max(1, args.kills // 4)):  # both kinds, at least a quarter each
        plan[i], plan[-1 - i] = signal.SIGKILL, signal.SIGTERM
    rng.shuffle(plan)
    # --by-step: training kills land --gap seconds after the run logs a step past its target; the
    # targets are spread over the run, so every kill happens before the end at any machine speed.
    targets = sorted(rng.uniform(0.05, 0.9) * args.steps for _ in range(args.kills)) if args.by_step else []
    kills, starts, t0 = [], 0, time.time()
    while True:
        if has_checkpoint(run):
            cmd = [sys.executable, "-m", "ratlip_cli", "train", "--resume", str(run)]
        else:  # killed before its first checkpoint: nothing to resume, start again
            shutil.rmtree(run, ignore_errors=True)
            cmd = train_cmd(args.preset, runs, data, "soak", args.steps, extra)
        starts += 1
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ready = _watch(proc, log)
        if len(kills) >= len(plan):
            rc = proc.wait()
            ready.join()
            if rc != 0:
                raise SystemExit(f"the final resume failed with exit code {rc}; see {out / 'soak.log'}")
            break
        during_start = rng.random() < args.startup_kills
        delay = rng.uniform(0, hi) if during_start else rng.uniform(lo, hi)
        before = _latest_step(run)
        if not during_start:  # wait for the trainer's first "step N/M" log line (--by-step: its target step)
            target = targets[len(kills)] if targets else -1
            while (not ready.seen.is_set() or ready.step < target) and proc.poll() is None:
                time.sleep(0.2)
        started = time.time()
        try:
            rc = proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            sig = plan[len(kills)]
            proc.send_signal(sig)
            rc = proc.wait()
            ready.join()
            step = _latest_step(run)
            kills.append({"signal": sig.name, "phase": "start" if during_start else "training",
                          "after_s": round(time.time() - started, 1), "exit": rc,
                          "checkpoint_before": before, "checkpoint_after": step,
                          "logged_step": ready.step, "at_s": round(time.time() - t0, 1)})
            print(f"kill {len(kills)}/{len(plan)}: {sig.name} {'during the start' if during_start else 'while training'}"
                  f" after {time.time() - started:.1f} s (exit {rc}); newest checkpoint: step {before} -> {step}",
                  flush=True)
            continue
        if rc == 0:  # finished before the planned kills: the budget is too small for this many kills
            raise SystemExit(f"the run finished after {len(kills)} kills; raise --steps or lower --gap")
        raise SystemExit(f"a training process failed with exit code {rc}; see {out / 'soak.log'}")
    soak_s = time.time() - t0
    if reference is not None:
        if reference.wait() != 0:
            raise SystemExit(f"the reference run failed with exit code {reference.returncode}; see {out / 'reference.log'}")
        while not ref_end:
            time.sleep(0.1)
        reference_s = ref_end[0] - t_ref
        print(f"reference: {args.steps} steps in {reference_s:.0f} s (beside the soak run)", flush=True)

    # 3. compare
    result = compare(runs / "reference", run)
    summary = {
        "command": " ".join([sys.executable, *sys.argv]),
        "preset": args.preset,
        "steps": args.steps,
        "seed": args.seed,
        "threads": args.threads,
        "reference_s": None if reference_s is None else round(reference_s, 1),
        "soak_s": round(soak_s, 1),
        "starts": starts,
        "kills": kills,
        "sigkill": sum(k["signal"] == "SIGKILL" for k in kills),
        "sigterm": sum(k["signal"] == "SIGTERM" for k in kills),
        **result,
    }
    (out / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _latest_step(run: Path) -> int | None:
    from ratlip_cli.train.checkpoint import latest_checkpoint

    path, state = latest_checkpoint(run / "checkpoints")
    return None if state is None else int(state["step"])


def compare(ref: Path, run: Path) -> dict:
    """Byte-equality of the exports, tensor-equality of the final training states, equal metrics rows."""
    import torch

    from ratlip_cli.train.checkpoint import latest_checkpoint
    from ratlip_cli.train.run import TIMING_COLUMNS, read_metrics

    a, b = (p / "export" / "generator.safetensors" for p in (ref, run))
    ja, jb = (json.loads((p / "export" / "generator.json").read_text()) for p in (ref, run))
    (_, sa), (_, sb) = latest_checkpoint(ref / "checkpoints"), latest_checkpoint(run / "checkpoints")

    def same(x, y) -> bool:
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and torch.equal(x, y)
        if isinstance(x, dict):
            return isinstance(y, dict) and set(x) == set(y) and all(same(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(same(u, v) for u, v in zip(x, y))
        return x == y

    keys = ["generator", "discriminator", "head", "ema", "opt_g", "opt_d", "rng", "noise_rng", "step", "images"]
    state_diff = [k for k in keys if not same(sa[k], sb[k])]
    rows = [[{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in read_metrics(p / "metrics.csv")]
            for p in (ref, run)]
    equal = a.read_bytes() == b.read_bytes() and ja["weights_sha256"] == jb["weights_sha256"]
    return {
        "export_bytes_equal": equal,
        "weights_sha256": jb["weights_sha256"],
        "final_step": int(sb["step"]),
        "state_differs_in": state_diff,
        "metrics_rows_equal": rows[0] == rows[1],
        "metrics_rows": len(rows[1]),
        "ok": equal and not state_diff and rows[0] == rows[1] and int(sb["step"]) == int(sa["step"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="preset to train (default tiny: 32 px shapes, tiny model)")
    parser.add_argument("--steps", type=int, required=True, help="train.max_steps of both runs")
    parser.add_argument("--kills", type=int, default=10, help="kills before the run may finish (default 10)")
    parser.add_argument("--gap", default="4,20",
                        help="MIN,MAX seconds from the trainer's first 'step N/M' log line to a kill (default 4,20)")
    parser.add_argument("--startup-kills", type=float, default=0.2,
                        help="fraction of kills at a random moment of the start instead (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="train.seed of both runs")
    parser.add_argument("--kill-seed", type=int, default=0, help="seed of the kill moments and signals")
    parser.add_argument("--checkpoint-every", type=int, default=20, help="train.checkpoint_every (default 20)")
    parser.add_argument("--log-every", type=int, default=10, help="train.log_every (default 10)")
    parser.add_argument("--sample-every", type=int, default=50, help="train.sample_every (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads of every training process (default 1)")
    parser.add_argument("--set", action="append", default=[], help="extra config key=value for both runs")
    parser.add_argument("--out", default="/tmp/ratlip-soak", help="work folder (deleted first unless --keep)")
    parser.add_argument("--keep", action="store_true", help="reuse OUT (e.g. its finished reference run)")
    parser.add_argument("--parallel", action="store_true",
                        help="train the reference at the same time as the soak run (2 cores: half the wall time)")
    parser.add_argument("--by-step", action="store_true",
                        help="training kills land --gap seconds after the run passes random step targets spread "
                             "over the run (every kill lands before the end, whatever the machine's speed)")
    args = parser.parse_args()
    summary = soak(args)
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
