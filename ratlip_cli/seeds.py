"""Every seed-to-noise rule of ratlip, side by side (stable hashes, never Python's salted `hash`).

- `derive_seed(*parts)`: the training run's seeds (init, data order, per-rank noise, random CLIP, ...).
- `noise_seed` / `row_seeds` / `interpolation_seeds`: `ratlip sample`, one seed per image, keyed by
  (seed, prompt, column) so a prompt's images do not depend on the other prompts.
- `caption_noise`: evaluation (`ratlip eval`, in-training shapes scoring, ablate), one seed per
  caption index.
- `make_noise(seeds, z_dim)`: noise rows, each from its own CPU generator (device-independent).
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch

_MASK63 = (1 << 63) - 1


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any parts (not Python's salted `hash`)."""
    text = "\x1f".join(str(p) for p in ("ratlip", *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & _MASK63


def noise_seed(seed: int, key: str, column: int) -> int:
    """The 63-bit seed of one sampled image's noise: a stable hash of its inputs."""
    digest = hashlib.sha256(f"ratlip-noise\x1f{seed}\x1f{key}\x1f{column}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & _MASK63


def make_noise(seeds: Sequence[int], z_dim: int) -> torch.Tensor:
    """Noise vectors (len(seeds), z_dim), each drawn on the CPU from its own seeded generator."""
    rows = []
    for s in seeds:
        gen = torch.Generator(device="cpu").manual_seed(int(s))
        rows.append(torch.randn(z_dim, generator=gen, dtype=torch.float32))
    return torch.stack(rows) if rows else torch.empty(0, z_dim)


def row_seeds(seed: int, prompt: str, n: int, vary_noise: bool = True) -> list[int]:
    """Noise seeds of one prompt row: keyed by the prompt, or shared by all rows with `vary_noise=False`."""
    key = prompt if vary_noise else ""
    return [noise_seed(seed, key, j) for j in range(n)]


def interpolation_seeds(seed: int, steps: int, vary_noise: bool = False) -> list[int]:
    """Noise seeds of an interpolation row: one fixed noise for every step, or one per step."""
    return [noise_seed(seed, "", j if vary_noise else 0) for j in range(steps)]


def caption_seed(seed: int, index: int) -> int:
    """The seed of evaluation caption number ``index``."""
    return int(seed) * 1_000_003 + int(index)


def caption_noise(n: int, z_dim: int, seed: int, start: int = 0) -> torch.Tensor:
    """Noise for evaluation captions ``start .. start + n - 1`` (each row from its own seeded generator)."""
    return make_noise([caption_seed(seed, i) for i in range(start, start + n)], z_dim)
