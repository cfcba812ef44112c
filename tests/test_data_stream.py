"""Streaming from tar shards: the epoch plan over ranks x workers, the shuffle buffer, exact resume, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ratlip_cli.config import resolve_config
from ratlip_cli.data import generate_shapes
from ratlip_cli.data.dataset import augment
from ratlip_cli.data.shards import load_shards
from ratlip_cli.data.stream import ShardStream, range_segments, shuffle_order
from ratlip_cli.errors import RatlipError
from ratlip_cli.train import Trainer, resume_config, train
from ratlip_cli.train.checkpoint import latest_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory) -> Path:
    """96 train + 54 test shapes at 32 px in shards of about 10 kB (uneven sample counts)."""
    root = tmp_path_factory.mktemp("shapes-shards")
    generate_shapes(root, size=32, train_per_combo=1, test_per_combo=1, novel_per_combo=1, fmt="shards", shard_mb=0.012)
    return root


def _tok(captions: list[str]) -> torch.Tensor:
    return torch.tensor([[len(c), sum(map(ord, c)) % 997] for c in captions])


def _stream(root, rank=0, world=1, batch=4, buffer=16, streams=4, seed=3) -> ShardStream:
    cfg = resolve_config("tiny", overrides=[f"data.shuffle_buffer={buffer}", f"data.streams={streams}", "data.flip=true"])
    return ShardStream(load_shards(root), "train", cfg.data, _tok, batch, seed, rank, world)


def _batches(ds: ShardStream, epoch: int, start: int, workers: int) -> list[list[int]]:
    ds.set_position(epoch, start)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    return [b["index"].tolist() for b in loader]


def test_shuffle_order_is_a_bounded_lookahead_permutation():
    order = shuffle_order(500, 32, seed=1)
    assert sorted(order) == list(range(500)) and order != list(range(500))
    assert all(i < t + 32 for t, i in enumerate(order))  # what keeps a replay within the buffer
    assert shuffle_order(50, 1, 0) == list(range(50))
    assert order == shuffle_order(500, 32, seed=1) != shuffle_order(500, 32, seed=2)


def test_range_segments_cover_the_range_in_order():
    segs = range_segments([2, 0, 1], [5, 3, 4], 2, 10)  # order: shard 2 (4), shard 0 (5), shard 1 (3)
    assert [(s.shard, s.start, s.stop, s.pos) for s in segs] == [(2, 2, 4, 0), (0, 0, 5, 2), (1, 0, 1, 7)]


def test_ranks_and_workers_split_an_epoch_without_duplicates_or_omissions(shard_root):
    n = load_shards(shard_root).manifest["counts"]["train"]["images"]
    assert n == 96
    for world, batch in ((2, 4), (3, 5)):
        seen = []
        for rank in range(world):
            ds = _stream(shard_root, rank, world, batch)
            got = _batches(ds, epoch=1, start=0, workers=2 if rank == 0 else 1)
            assert len(got) == ds.steps_per_epoch == n // (batch * world)
            assert all(len(b) == batch for b in got)
            seen += [i for b in got for i in b]
        assert len(seen) == len(set(seen)) == (n // (batch * world)) * batch * world  # only the last partial global batch dropped
    # The dropped remainder (3 x 5 = 15 per step: 96 = 6 * 15 + 6) is the tail of the epoch's shard order.


def test_order_is_independent_of_workers_and_changes_with_the_epoch(shard_root):
    ds = _stream(shard_root)
    main = _batches(ds, 0, 0, workers=0)
    assert _batches(ds, 0, 0, workers=2) == main == _batches(_stream(shard_root, streams=4), 0, 0, workers=1)
    assert sorted(i for b in main for i in b) == list(range(96))
    other = _batches(ds, 1, 0, workers=0)
    assert other != main and sorted(i for b in other for i in b) == list(range(96))
    with pytest.raises(RatlipError, match="must divide data.streams"):
        ds.check_workers(3)


@pytest.mark.parametrize("start", [1, 7, 23])
def test_resume_mid_epoch_gives_exactly_the_remaining_batches(shard_root, start):
    ds = _stream(shard_root)
    full = _batches(ds, 2, 0, workers=2)
    resumed = _batches(_stream(shard_root), 2, start, workers=2)
    assert resumed == full[start:]
    seen = {i for b in full[:start] + resumed for i in b}
    assert seen == {i for b in full for i in b}


def test_items_use_the_folder_format_augmentation(shard_root):
    ds = _stream(shard_root, batch=2, buffer=1, streams=1)
    ds.set_position(4, 0)
    batch = next(iter(ds))
    samples = {s.key: s for s in load_shards(shard_root).iter_split("train")}
    from PIL import Image
    import io

    for k, gid in enumerate(batch["index"].tolist()):
        sample = samples[batch["key"][k]]
        rng = np.random.default_rng([3, 4, gid])
        assert batch["caption"][k] == sample.captions[int(rng.integers(len(sample.captions)))]
        want = augment(Image.open(io.BytesIO(sample.image)).convert("RGB"), 32, 32, True, rng)
        assert torch.equal(batch["image"][k], want)
        assert torch.equal(batch["tokens"][k], _tok([batch["caption"][k]])[0])


def test_uint8_stream_converts_to_the_float_batch(shard_root):
    from ratlip_cli.data.dataset import to_model_range

    as_float, as_uint8 = _stream(shard_root, batch=4, buffer=1, streams=1), _stream(shard_root, batch=4, buffer=1, streams=1)
    as_uint8.uint8 = True  # what `ratlip train` builds (ShardStream(..., uint8=True))
    for ds in (as_float, as_uint8):
        ds.set_position(2, 0)
    f, u = next(iter(as_float)), next(iter(as_uint8))
    assert u["image"].dtype == torch.uint8 and u["key"] == f["key"]
    assert torch.equal(to_model_range(u["image"]), f["image"])


def _tiny(tmp_path, root, name, *sets):
    return resolve_config("tiny", overrides=[
        f"train.runs_dir={tmp_path / 'runs'}", f"data.root={root}", f"train.name={name}", "data.format=shards",
        "data.num_workers=2", "data.streams=4", "data.shuffle_buffer=8", "train.sample_every=0",
        "train.max_steps=0", "train.epochs=1", "train.log_every=0", "train.batch_size=8", *sets,
    ])


def test_training_kill_and_resume_sees_exactly_one_epoch(tmp_path, shard_root, monkeypatch):
    """One epoch (12 steps) straight == a crash at step 6 (checkpoint at 4) + resume, bit for bit, and
    the samples fed to the steps across crash + resume are exactly one epoch's."""
    seen: dict[str, list[list[int]]] = {}
    real_step = Trainer.train_step

    def recording_step(self, batch):
        seen.setdefault(self.paths.root.name, []).append(batch["index"].tolist())
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", recording_step)
    res = train(_tiny(tmp_path, shard_root, "straight"))
    assert res.step == 12 and res.stopped_by == "epochs"
    straight = seen["straight"]
    assert sorted(i for b in straight for i in b) == list(range(96))

    class Crash(Exception):
        pass

    def crash_at_6(step):
        if step == 6:
            raise Crash

    with pytest.raises(Crash):
        train(_tiny(tmp_path, shard_root, "crashed", "train.checkpoint_every=4"), on_step=crash_at_6)
    run = tmp_path / "runs" / "crashed"
    res = train(resume_config(run), resume=run)
    assert res.step == 12
    fed = seen["crashed"]
    assert len(fed) == 6 + 8  # steps 5 and 6 ran twice: before the crash and after the resume
    across = fed[:4] + fed[6:]
    assert across == straight
    _, a = latest_checkpoint(tmp_path / "runs" / "straight" / "checkpoints")
    _, b = latest_checkpoint(run / "checkpoints")
    for part in ("generator", "discriminator", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k}"


def test_sigterm_to_the_process_group_checkpoints_at_the_step_and_resumes_exactly(tmp_path, shard_root):
    """torchrun and SLURM signal the whole process group: the loader workers must not die of it
    before the training process checkpoints at the step boundary."""
    import multiprocessing
    import os
    import signal

    train(_tiny(tmp_path, shard_root, "straight", "train.epochs=0", "train.max_steps=6"))

    def group_sigterm(step):
        # The signal reaches the workers first; the training process (busy in its step, or waiting
        # for the next batch) gets it a step later: it must still find its workers alive.
        if step == 3:
            workers = multiprocessing.active_children()
            assert workers  # data.num_workers=2: the loader's worker processes
            for p in workers:
                os.kill(p.pid, signal.SIGTERM)
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    res = train(_tiny(tmp_path, shard_root, "killed", "train.epochs=0", "train.max_steps=6"), on_step=group_sigterm)
    assert res.stopped_by == "SIGTERM" and res.step == 4
    run = tmp_path / "runs" / "killed"
    assert train(resume_config(run), resume=run).step == 6
    _, a = latest_checkpoint(tmp_path / "runs" / "straight" / "checkpoints")
    _, b = latest_checkpoint(run / "checkpoints")
    for k in a["generator"]:
        assert torch.equal(a["generator"][k], b["generator"][k]), k
