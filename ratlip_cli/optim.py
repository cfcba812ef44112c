"""Optimisers built with the fastest implementation torch has for the device (same update rule)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def _fastest(cls: type[torch.optim.Optimizer], params: Iterable, **kwargs) -> torch.optim.Optimizer:
    """`cls` with torch's fused kernel, else its multi-tensor (foreach) version, else the loop."""
    params = list(params)
    for choice in ({"fused": True}, {"foreach": True}, {}):
        try:
            return cls(params, **kwargs, **choice)
        except (RuntimeError, ValueError, TypeError):
            continue
    raise AssertionError(f"unreachable: plain {cls.__name__} always builds")


def adam(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam with torch's fused kernel (CPU and CUDA), else its multi-tensor (foreach) version, else the loop.

    torch's default on CPU is the per-parameter loop: for the many small tensors of a GAN most of an
    optimiser step is Python and dispatch overhead, which the fused kernel removes. The update rule is
    Adam's in every case (results agree to float rounding, not bit for bit).
    """
    return _fastest(torch.optim.Adam, params, lr=lr, betas=betas)


def adamw(params: Iterable, lr: float, betas: tuple[float, float], eps: float) -> torch.optim.AdamW:
    """AdamW (parameters or parameter groups with their own weight decay), fastest kernel as `adam`."""
    return _fastest(torch.optim.AdamW, params, lr=lr, betas=betas, eps=eps)
