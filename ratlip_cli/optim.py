"""Optimisers built with the fastest implementation torch has for the device (same update rule)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adam(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam with torch's fused kernel (CPU and CUDA), else its multi-tensor (foreach) version, else the loop.

    torch's default on CPU is the per-parameter loop: for the many small tensors of a GAN most of an
    optimiser step is Python and dispatch overhead, which the fused kernel removes. The update rule is
    Adam's in every case (results agree to float rounding, not bit for bit).
    """
    params = list(params)
    for choice in ({"fused": True}, {"foreach": True}, {}):
        try:
            return torch.optim.Adam(params, lr=lr, betas=betas, **choice)
        except (RuntimeError, ValueError, TypeError):
            continue
    raise AssertionError("unreachable: plain Adam always builds")
