"""The seeded, resumable batch order of training (the generator's and DAMSM's)."""

from __future__ import annotations

from typing import Iterator

import torch

from ratlip_cli.seeds import derive_seed


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of dataset indices for one rank, from a seeded per-epoch permutation.

    Step k of epoch e gives rank r the slice ``perm_e[(k * W + r) * B : (k * W + r + 1) * B]``
    (W processes, per-process batch B, incomplete global batches dropped), so the order depends only
    on (seed, epoch) and resuming at step k of an epoch continues with the same samples.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world = rank, world_size
        self.epoch, self.start_step = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world)

    def set_position(self, epoch: int, start_step: int) -> None:
        self.epoch, self.start_step = epoch, start_step

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.seed, "order", epoch))
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.permutation(self.epoch)
        b, w = self.batch_size, self.world
        for k in range(self.start_step, self.steps_per_epoch):
            lo = (k * w + self.rank) * b
            yield perm[lo : lo + b].tolist()

    def __len__(self) -> int:
        return max(0, self.steps_per_epoch - self.start_step)
