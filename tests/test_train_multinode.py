"""Two "nodes" x two processes on this machine (torchrun, c10d rendezvous, gloo): one epoch of tar shards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as tdist

from ratlip_cli.data import generate_shapes
from ratlip_cli.train.loop import DEBUG_DUMP_ENV

WORKER = textwrap.dedent(
    """
    import json, os, sys
    from ratlip_cli.config import resolve_config
    from ratlip_cli.train import Trainer, train

    out, sets = sys.argv[1], sys.argv[2:]
    seen, real_step = [], Trainer.train_step

    def recording_step(self, batch):
        seen.append(batch["index"].tolist())
        return real_step(self, batch)

    Trainer.train_step = recording_step
    train(resolve_config("tiny", overrides=sets))
    with open(os.path.join(out, "seen-" + os.environ["RANK"] + ".json"), "w") as fh:
        json.dump({"seen": seen, "group_rank": os.environ["GROUP_RANK"], "local_rank": os.environ["LOCAL_RANK"]}, fh)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not tdist.is_available() or not tdist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_nodes_of_two_processes_share_one_epoch_of_shards(tmp_path):
    data = tmp_path / "shards"
    generate_shapes(data, size=32, train_per_combo=1, test_per_combo=1, novel_per_combo=1, fmt="shards", shard_mb=0.012)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out, dump = tmp_path / "out", tmp_path / "dump"
    out.mkdir()
    dump.mkdir()
    port = _free_port()
    sets = [f"train.runs_dir={tmp_path / 'runs'}", f"data.root={data}", "train.name=multinode", "data.format=shards",
            "train.max_steps=0", "train.epochs=1", "train.sample_every=0", "train.log_every=0",
            "data.num_workers=1", "data.streams=2", "data.shuffle_buffer=8"]
    env = {**os.environ, DEBUG_DUMP_ENV: str(dump), "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2",
             "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=ratlip-test",
             f"--node_rank={node}", str(script), str(out), *sets],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for node in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)

    # Every global rank trained the same 6 steps (96 samples / (4 processes x batch 4)) on its own samples.
    runs = {r: json.loads((out / f"seen-{r}.json").read_text()) for r in range(4)}
    assert sorted((v["group_rank"], v["local_rank"]) for v in runs.values()) == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    seen = [i for v in runs.values() for batch in v["seen"] for i in batch]
    assert all(len(v["seen"]) == 6 and all(len(b) == 4 for b in v["seen"]) for v in runs.values())
    assert sorted(seen) == list(range(96))  # one epoch: no duplicates, no omissions

    # The processes stayed identical (gradients averaged over both nodes), and only rank 0 wrote the run.
    ref = torch.load(dump / "rank0.pt", weights_only=True)
    for r in (1, 2, 3):
        other = torch.load(dump / f"rank{r}.pt", weights_only=True)
        for part in ("generator", "discriminator", "ema"):
            for k in ref[part]:
                assert torch.equal(ref[part][k], other[part][k]), f"rank {r}: {part}.{k}"
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["multinode"]
