"""Gradient accumulation: one process with `train.accumulate=2` equals torchrun with 2 processes.

The release trains 8 processes x 64 images: mismatched pairs, MA-GP and BatchNorm statistics are
per 64 and the optimiser sees the mean over 512. `train.accumulate` reproduces that on fewer
processes; these tests run the tiny preset both ways on CPU (gloo) and compare the final weights,
BatchNorm statistics, EMA and logged losses.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist

from ratlip_cli.config import TrainConfig, accumulation, resolve_config
from ratlip_cli.errors import RatlipError
from ratlip_cli.train.loop import DEBUG_DUMP_ENV

STEPS = 3


def _train(root: Path, data: Path, name: str, *sets: str, processes: int = 1) -> Path:
    """Train tiny for STEPS steps; returns the folder where every rank dumped its final weights."""
    dump = root / name / "dump"
    dump.mkdir(parents=True)
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    cmd = [
        sys.executable, *launcher, "-m", "ratlip_cli", "train", "tiny", "--device", "cpu",
        "--set", f"train.runs_dir={root / name / 'runs'}", "--set", f"data.root={data}", "--set", "train.name=r",
        "--set", f"train.max_steps={STEPS}", "--set", "train.sample_every=0", "--set", "train.log_every=1",
        *[x for s in sets for x in ("--set", s)],
    ]
    env = {**os.environ, DEBUG_DUMP_ENV: str(dump), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / name


def _weights(run: Path) -> dict:
    return torch.load(run / "dump" / "rank0.pt", weights_only=True)


def _losses(run: Path) -> list[dict[str, str]]:
    with open(run / "runs" / "r" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _max_diff(a: dict, b: dict) -> dict[str, float]:
    out = {}
    for part in ("generator", "discriminator", "head", "ema"):
        assert set(a[part]) == set(b[part])
        diffs = [0.0]
        for k, x in a[part].items():
            y = b[part][k]
            assert x.shape == y.shape, f"{part}.{k}"
            if x.is_floating_point():
                diffs.append((x.double() - y.double()).abs().max().item())
            else:  # BatchNorm's num_batches_tracked: one per optimiser step
                assert torch.equal(x, y), f"{part}.{k}: {x} != {y}"
        out[part] = max(diffs)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not tdist.is_available() or not tdist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    root = tmp_path_factory.mktemp("accumulate")
    data = root / "data"
    return {
        "accumulate": _train(root, data, "accumulate", "train.accumulate=2"),
        "torchrun": _train(root, data, "torchrun", processes=2),
        "one-batch": _train(root, data, "one-batch", "train.batch_size=8"),
    }


def test_one_process_accumulating_two_equals_two_processes(runs):
    cfg = resolve_config("tiny")
    # Adam (beta1 = 0) moves a weight by about lr per step whatever the gradient's size, so a
    # different batch semantics shows as differences of order lr; rounding of the gradient mean
    # (sum of two halves here, gloo's all-reduce there) stays far below a tenth of one update.
    tol = 0.1 * min(cfg.train.lr_g, cfg.train.lr_d)
    diff = _max_diff(_weights(runs["accumulate"]), _weights(runs["torchrun"]))
    assert all(d <= tol for d in diff.values()), diff
    rows_a, rows_t = _losses(runs["accumulate"]), _losses(runs["torchrun"])
    assert [int(r["step"]) for r in rows_a] == [1, 2, 3] == [int(r["step"]) for r in rows_t]
    assert [int(r["images"]) for r in rows_a] == [8, 16, 24] == [int(r["images"]) for r in rows_t]
    for ra, rt in zip(rows_a, rows_t):
        for col in ("d_loss", "d_real", "d_fake", "d_mis", "g_loss"):
            assert float(ra[col]) == pytest.approx(float(rt[col]), rel=1e-4, abs=1e-6), col


def test_accumulation_is_not_one_big_batch(runs):
    """The same 8 images per step as one batch of 8 (pairs, MA-GP, BatchNorm over 8) train differently."""
    cfg = resolve_config("tiny")
    diff = _max_diff(_weights(runs["accumulate"]), _weights(runs["one-batch"]))
    assert diff["generator"] > 0.5 * cfg.train.lr_g, diff
    assert diff["discriminator"] > 0.5 * cfg.train.lr_d, diff


def test_checkpoint_records_the_layout(runs):
    from ratlip_cli.train.checkpoint import latest_checkpoint

    _, state = latest_checkpoint(runs["accumulate"] / "runs" / "r" / "checkpoints")
    assert (state["world_size"], state["accumulate"], state["batch_size"]) == (1, 2, 4)
    assert len(state["noise_rng"]) == 1 and len(state["noise_rng"][0]) == 2  # one generator per micro-batch


def test_global_batch_sets_the_accumulation():
    t = TrainConfig(batch_size=64, global_batch=512)
    assert [accumulation(t, w) for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    assert accumulation(TrainConfig(batch_size=64, accumulate=3), 2) == 3
    with pytest.raises(RatlipError, match="not a multiple"):
        accumulation(TrainConfig(batch_size=64, global_batch=512), 3)
    with pytest.raises(RatlipError, match="set only one"):
        accumulation(TrainConfig(batch_size=64, global_batch=512, accumulate=2), 1)


def test_dmgan_family_refuses_accumulation(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ratlip_cli", "train", "tiny", "--device", "cpu", "--set", "model.family=dmgan",
         "--set", "train.accumulate=2", "--set", f"train.runs_dir={tmp_path / 'runs'}",
         "--set", f"data.root={tmp_path / 'data'}", "--set", "train.max_steps=1"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "train.accumulate" in proc.stdout + proc.stderr and "ratlip and galip" in proc.stdout + proc.stderr
