"""Multi-process training on CPU: torchrun, 2 processes, gloo backend, tiny preset."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as tdist

from ratlip_cli.train.checkpoint import latest_checkpoint
from ratlip_cli.train.loop import DEBUG_DUMP_ENV
from ratlip_cli.train.run import read_metrics


@pytest.mark.skipif(not tdist.is_available() or not tdist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_torchrun_two_cpu_processes_stay_identical_and_only_rank0_writes(tmp_path):
    dump = tmp_path / "dump"
    dump.mkdir()
    runs, data = tmp_path / "runs", tmp_path / "data"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "ratlip_cli", "train", "tiny", "--device", "cpu",
        "--set", f"train.runs_dir={runs}", "--set", f"data.root={data}", "--set", "train.name=ddp",
        "--set", "train.max_steps=3", "--set", "train.sample_every=0",
    ]
    env = {**os.environ, DEBUG_DUMP_ENV: str(dump), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # Identical parameters (and EMA, BatchNorm statistics) on both ranks, equal to rank 0's checkpoint.
    r0 = torch.load(dump / "rank0.pt", weights_only=True)
    r1 = torch.load(dump / "rank1.pt", weights_only=True)
    for part in ("generator", "discriminator", "head", "ema"):
        assert set(r0[part]) == set(r1[part])
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), f"{part}.{k} differs between ranks"
    _, state = latest_checkpoint(runs / "ddp" / "checkpoints")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    for k, v in state["generator"].items():
        assert torch.equal(v, r0["generator"][k])

    # Only rank 0 wrote: one run directory, one header and one row per step, one announcement.
    assert [p.name for p in runs.iterdir()] == ["ddp"]
    rows = read_metrics(runs / "ddp" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert int(rows[-1]["images"]) == 3 * 2 * 4  # steps x processes x per-process batch
    assert proc.stdout.count("run directory:") == 1
