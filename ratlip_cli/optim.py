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


# ---------------------------------------------------------------------------------------------
# skipping a step on the device: no host read of "were the losses finite?"


def all_finite(values: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool tensor on ``values``' device: every entry is finite (nothing is read on the host)."""
    return torch.isfinite(values).all()


def skips_on_device(opt: torch.optim.Optimizer) -> bool:
    """Whether `step_unless` can skip ``opt``'s step on the device: its fused kernel takes a ``found_inf``.

    This is how `torch.amp.GradScaler` skips fused optimisers without a sync; the foreach and loop
    implementations have no such input (a step holding one keeps the host check instead).
    """
    return bool(getattr(opt, "_step_supports_amp_scaling", False)) and all(
        g.get("fused") for g in opt.param_groups)


def step_unless(opt: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """``opt.step()``, unless the 0-dim device tensor ``skip`` is true, decided by the kernel itself.

    A skipped step leaves parameters, moments and step counters as they were (the fused kernel
    returns before touching them and the counters take back their +1); a step taken is the plain
    ``opt.step()`` bit for bit (the counters take back 0). Needs `skips_on_device(opt)`.
    """
    opt.found_inf = skip.to(torch.float32)  # type: ignore[attr-defined]
    try:
        opt.step()
    finally:
        del opt.found_inf  # type: ignore[attr-defined]


class BufferGuard:
    """Buffers (BatchNorm statistics) as they were where a step would have returned early, on the device.

    ``save(when)`` records the buffers' values now where the 0-dim bool ``when`` is true (always on the
    first call); ``restore_unless(keep)`` puts the recorded values back unless ``keep`` is true.
    """

    def __init__(self, buffers: list[torch.Tensor]) -> None:
        self.buffers = buffers
        self.saved: list[torch.Tensor] | None = None

    def save(self, when: torch.Tensor | None = None) -> None:
        if self.saved is None or when is None:
            self.saved = [b.clone() for b in self.buffers]
            return
        for s, b in zip(self.saved, self.buffers):
            torch.where(when, b, s, out=s)

    def restore_unless(self, keep: torch.Tensor) -> None:
        if self.saved is None:
            return
        for b, s in zip(self.buffers, self.saved):
            torch.where(keep, b, s, out=b)
