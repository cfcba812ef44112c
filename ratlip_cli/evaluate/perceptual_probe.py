"""Does a perceptual loss measure content or reward blur? A probe on `shapes` with known answers.

For one caption (colour, shape, background, size) a real image I is compared with three candidates:
a *sharp correct* sample (another image of the same caption: the object elsewhere, another extent
within the size class), the *mean* of many such samples (the blur an averaging generator would
converge to), and a *flat* image of the mean's average colour. A loss fit for ECAGAN's stages must
score the sharp sample lowest: a lower loss for the mean pulls every stage toward the average image
(issue 30: Inception conv_4 does this on shapes; mixed_7 does not). The positions of shapes are
random, so the test of a layer is exactly whether it forgives where the object is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ratlip_cli.data.shapes import MARGIN, SIZES, render_spec

# A spread of colours, shapes and backgrounds (no held-out combination needed: no training involved).
PROBE_COMBOS: tuple[tuple[str, str, str, str], ...] = (
    ("red", "circle", "blue", "big"), ("yellow", "square", "black", "small"), ("cyan", "triangle", "gray", "big"),
    ("magenta", "square", "gray", "big"), ("green", "circle", "blue", "small"), ("white", "triangle", "black", "big"),
)


@dataclass
class ProbeResult:
    """Mean loss against a real image of each candidate, over the probe's captions; and the ranking."""

    sharp: float
    mean: float
    flat: float

    @property
    def content_first(self) -> bool:
        """True where a sharp correct sample scores lower than both the mean image and the flat image."""
        return self.sharp < self.mean and self.sharp < self.flat


def _specs(combo: tuple[str, str, str, str], count: int, rng: np.random.Generator) -> list[dict]:
    colour, shape, background, size = combo
    lo, hi = SIZES[size]
    out = []
    for _ in range(count):
        extent = float(rng.uniform(lo, hi))
        low, high = MARGIN + extent / 2, 1 - MARGIN - extent / 2
        cx, cy = (float(v) for v in rng.uniform(low, high, size=2))
        out.append({"colour": colour, "shape": shape, "background": background, "size": size,
                    "extent": extent, "cx": cx, "cy": cy})
    return out


def _tensor(images: Sequence) -> torch.Tensor:
    """PIL images -> (N, 3, H, W) in [-1, 1]."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def probe_perceptual(loss: torch.nn.Module, image_size: int, samples: int = 30, reals: int = 4, seed: int = 0,
                     combos: Sequence[tuple[str, str, str, str]] = PROBE_COMBOS) -> ProbeResult:
    """Score the sharp, mean and flat candidates against ``reals`` real images per caption at ``image_size``
    with ``loss(fake, real)`` (a `PerceptualLoss`); averages over reals and captions."""
    rng = np.random.default_rng(seed)
    totals = np.zeros(3)
    for combo in combos:
        specs = _specs(combo, reals + 1 + samples, rng)
        imgs = _tensor([render_spec(s, image_size) for s in specs])
        real, sharp, pool = imgs[:reals], imgs[reals:reals + 1], imgs[reals + 1:]
        mean = pool.mean(0, keepdim=True)
        flat = mean.mean(dim=(2, 3), keepdim=True).expand_as(mean)
        for cand, k in ((sharp, 0), (mean, 1), (flat, 2)):
            totals[k] += float(loss(cand.expand_as(real), real))
    totals /= len(combos)
    return ProbeResult(*(float(v) for v in totals))
