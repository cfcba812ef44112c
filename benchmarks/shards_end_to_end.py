"""Issue 20's end-to-end check: shard dataset -> 2 "nodes" x 2 processes -> kill -> resume -> eval.

    python benchmarks/shards_end_to_end.py [--out /tmp/shards-e2e] [--kill-after 60]

1. `ratlip prepare shapes --format shards` (32 px, 3,072 train + 384 test samples, shards of 1 MB);
2. an uninterrupted run: two torchrun launchers (`--nnodes=2 --nproc_per_node=2`, c10d rendezvous
   on 127.0.0.1, gloo), one epoch of the `tiny` preset (192 steps of 4 x 4 images);
3. the same run killed: SIGTERM to both launchers after `--kill-after` seconds (torchrun passes it
   to the workers, which checkpoint at the next step boundary), then `ratlip train --resume` with
   the same launchers to the end of the epoch;
4. both runs' final weights compared on every rank (RATLIP_DEBUG_DUMP_DIR), and `ratlip eval` of the
   resumed run on the shards' test split (tiny preset: random-tiny features, so NOT an FID).

Prints what each stage did; exits 1 if the weights differ. Nothing here is a test (it takes minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], env: dict, log: Path) -> list[subprocess.Popen]:
    """Two torchrun launchers ("nodes") of two processes each, running `python -m ratlip_cli ARGS`."""
    port = _port()
    procs = []
    for node in range(2):
        fh = open(log.with_name(f"{log.stem}-node{node}.log"), "w")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id=e2e-{port}",
               f"--node_rank={node}", "-m", "ratlip_cli", *args]
        procs.append(subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT))
    return procs


def wait(procs: list[subprocess.Popen]) -> list[int]:
    return [p.wait() for p in procs]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/shards-e2e"))
    ap.add_argument("--kill-after", type=float, default=60.0, help="seconds before SIGTERM reaches the killed run")
    args = ap.parse_args()
    import torch

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data, runs = out / "shapes-shards", out / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ratlip_cli", "prepare", "shapes", "--preset", "tiny", "--out", str(data),
                    "--format", "shards", "--shard-mb", "1"], check=True, env=env)
    manifest = json.loads((data / "manifest.json").read_text())
    print(f"prepared {manifest['total']['images']} samples in {len(manifest['shards'])} shards "
          f"({time.perf_counter() - t:.1f} s): {json.dumps(manifest['counts'])}", flush=True)

    common = ["train", "tiny", "--set", f"data.root={data}", "--set", f"train.runs_dir={runs}",
              "--set", "train.max_steps=0", "--set", "train.epochs=1", "--set", "train.sample_every=0",
              "--set", "train.log_every=48", "--set", "train.checkpoint_every=1000",
              "--set", "data.num_workers=1", "--set", "data.streams=2"]
    results = {}
    for name in ("straight", "killed"):
        dump = out / f"dump-{name}"
        dump.mkdir(exist_ok=True)
        run_env = {**env, "RATLIP_DEBUG_DUMP_DIR": str(dump)}
        t = time.perf_counter()
        procs = launch([*common, "--set", f"train.name={name}"], run_env, out / f"{name}.log")
        if name == "killed":
            time.sleep(args.kill_after)
            for p in procs:
                p.send_signal(signal.SIGTERM)
            codes = wait(procs)
            state = torch.load(sorted((runs / name / "checkpoints").glob("ckpt-*.pt"))[-1], weights_only=False)
            print(f"killed after {time.perf_counter() - t:.0f} s: launchers exited {codes}; checkpoint at step "
                  f"{state['step']} (epoch {state['epoch']}, step {state['step_in_epoch']} of it)", flush=True)
            t = time.perf_counter()
            procs = launch(["train", "--resume", str(runs / name)], run_env, out / f"{name}-resume.log")
        codes = wait(procs)
        print(f"{name}: launchers exited {codes} after {time.perf_counter() - t:.0f} s", flush=True)
        results[name] = dump

    same = True
    for rank in range(4):
        a = torch.load(results["straight"] / f"rank{rank}.pt", weights_only=True)
        b = torch.load(results["killed"] / f"rank{rank}.pt", weights_only=True)
        for part in ("generator", "discriminator", "head", "ema"):
            for k in a[part]:
                if not torch.equal(a[part][k], b[part][k]):
                    same = False
                    print(f"rank {rank}: {part}.{k} differs")
    print(f"final weights of the killed + resumed run equal the uninterrupted run's on all 4 ranks: {same}")

    t = time.perf_counter()
    ev = subprocess.run([sys.executable, "-m", "ratlip_cli", "eval", "--run", str(runs / "killed"), "--device", "cpu",
                         "--json", "--quiet", "--set", f"eval.cache_dir={out / 'fid-cache'}"],
                        env=env, capture_output=True, text=True)
    print(f"eval exit {ev.returncode} in {time.perf_counter() - t:.0f} s: {ev.stdout.strip().splitlines()[-1] if ev.stdout.strip() else ev.stderr[-2000:]}")
    return 0 if same and ev.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
