"""Streaming training batches from tar shards: each process and loader worker reads its own part of an epoch.

The epoch plan is a function of (seed, epoch, the shards' sample counts, per-process batch B,
processes W, streams V) only:

- the split's shards in a seeded random order (new each epoch), their samples concatenated: N;
- T = N // (B * W) steps; the last N - T*B*W samples of that order are dropped (the folder format
  drops its incomplete global batch the same way), every other sample is used exactly once;
- rank r reads the contiguous range [r*T*B, (r+1)*T*B) of the order (so at most two shards per
  rank are shared with a neighbour, each read only in part);
- the rank's step j takes its batch from stream j % V. Stream v holds the contiguous part of the
  rank's range its batches need, read in order through a shuffle buffer of S samples whose output
  order is drawn up front from a seeded RNG (`shuffle_order`), so it can be replayed;
- DataLoader worker k of K (K must divide V) serves the steps j with (j - s) % K == k (s: the
  step it starts at), i.e. whole streams; the DataLoader's round robin returns them in step order.

So a rank's batches do not depend on the number of loader workers, and resuming at step s of an
epoch continues with exactly the batches an uninterrupted run would have had: stream v skips the
outputs of its first batches and never reads the image data of samples already used.
"""

from __future__ import annotations

import io
import random
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ratlip_cli.config import DataConfig
from ratlip_cli.data.dataset import augment
from ratlip_cli.data.shards import ShardSet, decode_sample, iter_tar_groups
from ratlip_cli.errors import RatlipError
from ratlip_cli.seeds import derive_seed


def shuffle_order(n: int, buffer: int, seed: int) -> list[int]:
    """The output order of a shuffle buffer of `buffer` samples over inputs 0..n-1 (1 = no shuffle).

    Output t is always an input < t + buffer, so replaying it never holds more than `buffer` samples.
    """
    rng = random.Random(seed)
    out: list[int] = []
    buf: list[int] = []
    for i in range(n):
        buf.append(i)
        if len(buf) >= buffer:
            k = rng.randrange(len(buf))
            out.append(buf[k])
            buf[k] = buf[-1]
            buf.pop()
    while buf:
        k = rng.randrange(len(buf))
        out.append(buf[k])
        buf[k] = buf[-1]
        buf.pop()
    return out


@dataclass
class Segment:
    """Samples [start, stop) of shard `shard` (its index in the split), at input position `pos` of a stream."""

    shard: int
    start: int
    stop: int
    pos: int


def range_segments(order: list[int], counts: list[int], lo: int, hi: int) -> list[Segment]:
    """The samples [lo, hi) of the shards concatenated in `order`, as per-shard segments."""
    segments, offset = [], 0
    for shard in order:
        n = counts[shard]
        a, b = max(lo, offset), min(hi, offset + n)
        if a < b:
            segments.append(Segment(shard, a - offset, b - offset, a - lo))
        offset += n
        if offset >= hi:
            break
    return segments


class ShardStream(IterableDataset):
    """Whole batches `{image: (B, 3, crop, crop), tokens: (B, L), caption: [str], index: (B,), key: [str]}`
    of one rank, streamed from a split of a `ShardSet` (see the module docstring for the plan).

    `index` is a sample's global id (its position in the split's shards in manifest order): each
    sample's caption choice, crop and flip come from a generator seeded by (seed, epoch, id), as in
    `TextImageDataset`. Call `set_position(epoch, step)` before iterating; it yields the steps from
    `step` to the end of the epoch.
    """

    def __init__(
        self,
        shards: ShardSet,
        split: str,
        data_cfg: DataConfig,
        tokenizer: Callable[[list[str]], torch.Tensor],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        uint8: bool = False,
    ) -> None:
        if data_cfg.crop_size > data_cfg.load_size:
            raise RatlipError(
                f"data.crop_size ({data_cfg.crop_size}) must not exceed data.load_size ({data_cfg.load_size})"
            )
        if data_cfg.streams < 1:
            raise RatlipError(f"data.streams must be at least 1, got {data_cfg.streams}")
        self.shards = shards
        self.split = split
        self.infos = shards.split_shards(split)
        self.counts = [s.samples for s in self.infos]
        self.bases = np.cumsum([0, *self.counts]).tolist()
        self.load_size, self.crop_size, self.flip = data_cfg.load_size, data_cfg.crop_size, data_cfg.flip
        self.uint8 = uint8  # hand uint8 pixels over (training); to_model_range converts on the device
        self.buffer = max(1, int(data_cfg.shuffle_buffer))
        self.streams = int(data_cfg.streams)
        self.tokenizer = tokenizer
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.rank, self.world = int(rank), int(world_size)
        self.epoch, self.start_step = 0, 0

    # ---- the plan ------------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """Samples in the split."""
        return self.bases[-1]

    @property
    def steps_per_epoch(self) -> int:
        """Steps of one epoch (incomplete global batches dropped)."""
        return self.num_samples // (self.batch_size * self.world)

    def check_workers(self, num_workers: int) -> None:
        """Refuse a loader worker count that does not divide data.streams."""
        if num_workers > 0 and self.streams % num_workers:
            raise RatlipError(
                f"data.num_workers ({num_workers}) must divide data.streams ({self.streams}); "
                f"set data.streams to a multiple of it (e.g. --set data.streams={num_workers * 2})"
            )

    def set_position(self, epoch: int, start_step: int) -> None:
        """Start the next iteration at step `start_step` of epoch `epoch`."""
        self.epoch, self.start_step = int(epoch), int(start_step)

    def shard_order(self, epoch: int) -> list[int]:
        """The split's shards (indices) in epoch `epoch`'s order."""
        order = list(range(len(self.infos)))
        random.Random(derive_seed(self.seed, "shard-order", epoch)).shuffle(order)
        return order

    def stream_plan(self, epoch: int, stream: int) -> tuple[list[Segment], int]:
        """(segments, batches) of this rank's stream `stream` in epoch `epoch`."""
        t, b, v = self.steps_per_epoch, self.batch_size, self.streams
        before = sum(len(range(u, t, v)) for u in range(stream))
        batches = len(range(stream, t, v))
        lo = self.rank * t * b + before * b
        return range_segments(self.shard_order(epoch), self.counts, lo, lo + batches * b), batches

    # ---- reading -------------------------------------------------------------------------------
    def _stream(self, epoch: int, stream: int, first_batch: int) -> Iterator[tuple[int, Any]]:
        """(global id, Sample) of stream `stream` from batch `first_batch` on, in shuffle-buffer order."""
        segments, batches = self.stream_plan(epoch, stream)
        n = batches * self.batch_size
        order = shuffle_order(n, self.buffer, derive_seed(self.seed, "buffer", epoch, self.rank, stream))
        skip = first_batch * self.batch_size
        used = set(order[:skip])
        starts = [s.pos for s in segments]

        def gid(pos: int) -> int:
            s = segments[bisect_right(starts, pos) - 1]
            return self.bases[s.shard] + s.start + (pos - s.pos)

        def inputs() -> Iterator[tuple[int, Any]]:
            for s in segments:
                location = self.shards.location(self.infos[s.shard])

                def want(i: int, s=s) -> bool:
                    return i >= s.start and (s.pos + i - s.start) not in used

                info = self.infos[s.shard]
                for index, member, parts in iter_tar_groups(location, want, s.stop, s.start, info.index):
                    yield s.pos + index - s.start, decode_sample(index, member, parts)

        reader, loaded = inputs(), {}
        for t in range(skip, n):
            want_pos = order[t]
            while want_pos not in loaded:
                try:
                    pos, sample = next(reader)
                except StopIteration:
                    raise RatlipError(
                        f"a shard of split '{self.split}' holds fewer samples than the manifest says; "
                        "prepare the dataset again"
                    ) from None
                loaded[pos] = sample
            yield gid(want_pos), loaded.pop(want_pos)

    def _item(self, gid: int, sample) -> tuple[torch.Tensor, str]:
        from PIL import Image

        if sample.image is None or not sample.captions:
            raise RatlipError(f"sample '{sample.key}' of split '{self.split}' lacks an image or captions")
        rng = np.random.default_rng([self.seed, self.epoch, gid])
        caption = sample.captions[int(rng.integers(len(sample.captions)))]
        with Image.open(io.BytesIO(sample.image)) as im:
            img = im.convert("RGB")
        return augment(img, self.load_size, self.crop_size, self.flip, rng, self.uint8), caption

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self.check_workers(workers if info is not None else 0)
        t, v, s = self.steps_per_epoch, self.streams, self.start_step
        mine = [u for u in range(v) if (u - s) % workers == worker]
        readers = {u: self._stream(self.epoch, u, len(range(u, s, v))) for u in mine}
        for j in range(s + worker, t, workers):
            reader = readers[j % v]
            ids, images, captions, keys = [], [], [], []
            for _ in range(self.batch_size):
                gid, sample = next(reader)
                image, caption = self._item(gid, sample)
                ids.append(gid)
                images.append(image)
                captions.append(caption)
                keys.append(sample.key)
            yield {
                "image": torch.stack(images),
                "tokens": self.tokenizer(captions).long(),
                "caption": captions,
                "index": torch.tensor(ids, dtype=torch.long),
                "key": keys,
            }

    def __len__(self) -> int:
        return max(0, self.steps_per_epoch - self.start_step)
