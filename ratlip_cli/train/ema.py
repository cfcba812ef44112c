"""Exponential moving average of the generator, with a half-life in images and a ramp-up (StyleGAN2-ADA).

After each generator update with ``batch`` images (all processes together), having seen
``cur_images`` images so far::

    halflife = ema_halflife_kimg * 1000
    if rampup > 0: halflife = min(halflife, cur_images * rampup)
    beta = 0.5 ** (batch / max(halflife, 1e-8))
    ema = beta * ema + (1 - beta) * param      # trainable parameters
    ema_buffer = buffer                        # BatchNorm running statistics etc., copied

The frozen CLIP inside the generator is shared with the live model, not copied or averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _frozen_ids(module: nn.Module) -> set[int]:
    return {id(p) for p in module.parameters() if not p.requires_grad}


class EmaGenerator:
    """An EMA copy of a generator that shares its frozen submodules (CLIP) with the live one."""

    def __init__(self, generator: nn.Module, halflife_kimg: float, rampup: float) -> None:
        self.halflife_images = float(halflife_kimg) * 1000.0
        self.rampup = float(rampup)
        # Share frozen submodules (whole modules whose parameters are all frozen, e.g. the CLIP
        # backbone) instead of copying them: the EMA of a constant is the constant.
        memo: dict[int, object] = {}
        for mod in generator.modules():
            params = list(mod.parameters())
            if mod is not generator and params and not any(p.requires_grad for p in params):
                memo[id(mod)] = mod
        shared_modules = list(memo.values())
        self.module = copy.deepcopy(generator, memo)  # deepcopy adds its own entries to memo
        self.module.eval().requires_grad_(False)
        frozen = _frozen_ids(generator)
        shared = {id(t) for m in shared_modules for t in list(m.parameters()) + list(m.buffers())}  # type: ignore[attr-defined]
        live_params = dict(generator.named_parameters())
        ema_params = dict(self.module.named_parameters())
        names = [n for n, p in live_params.items() if id(p) not in frozen and id(p) not in shared]
        self._live_params = [live_params[n] for n in names]
        self._ema_params = [ema_params[n] for n in names]
        live_bufs = dict(generator.named_buffers())
        ema_bufs = dict(self.module.named_buffers())
        bnames = [n for n, b in live_bufs.items() if id(b) not in shared and n in ema_bufs]
        self._live_bufs = [live_bufs[n] for n in bnames]
        self._ema_bufs = [ema_bufs[n] for n in bnames]

    def beta(self, batch_images: int, cur_images: int) -> float:
        """The decay for one update of ``batch_images`` images after ``cur_images`` images in total."""
        halflife = self.halflife_images
        if self.rampup > 0:
            halflife = min(halflife, cur_images * self.rampup)
        return 0.5 ** (batch_images / max(halflife, 1e-8))

    @torch.no_grad()
    def update(self, batch_images: int, cur_images: int, skip: torch.Tensor | None = None) -> float:
        """Move the EMA towards the live weights; returns the beta used.

        ``skip``: a 0-dim bool tensor (a step's `StepOutput.skipped`, on the device): where true the
        EMA keeps its values (beta 1, nothing of the live weights added, buffers not copied), decided
        on the device without a host read; where false the update is the unmasked one bit for bit.
        """
        beta = self.beta(batch_images, cur_images)
        if self._ema_params:
            # ema = param + beta * (ema - param), i.e. lerp(param, ema, beta), in the EMA's dtype.
            live = [p.detach().to(e.dtype) for p, e in zip(self._live_params, self._ema_params)]
            if skip is None:
                torch._foreach_mul_(self._ema_params, beta)
            else:  # x * 1 and x + (1 - beta) * 0 leave x as it is (a -0.0 may read +0.0)
                torch._foreach_mul_(self._ema_params, torch.where(skip, 1.0, beta))
                live = torch._foreach_mul(live, (~skip).to(live[0].dtype))
            torch._foreach_add_(self._ema_params, live, alpha=1.0 - beta)
        for e, b in zip(self._ema_bufs, self._live_bufs):
            if skip is None:
                e.copy_(b)
            else:
                torch.where(skip, e, b.to(e.dtype), out=e)
        return beta

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA's own tensors (trainable parameters and buffers, frozen CLIP left out)."""
        ema_params = dict(self.module.named_parameters())
        ema_bufs = dict(self.module.named_buffers())
        ids = {id(t) for t in self._ema_params + self._ema_bufs}
        out = {n: t.detach().clone() for n, t in ema_params.items() if id(t) in ids}
        out.update({n: t.detach().clone() for n, t in ema_bufs.items() if id(t) in ids})
        return out

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore tensors saved by `state_dict` (every one must be present, with the same shape)."""
        ema_params = dict(self.module.named_parameters())
        ema_bufs = dict(self.module.named_buffers())
        ids = {id(t) for t in self._ema_params + self._ema_bufs}
        targets = {n: t for n, t in list(ema_params.items()) + list(ema_bufs.items()) if id(t) in ids}
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        if missing or unexpected:
            raise KeyError(f"EMA state mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
        for n, t in targets.items():
            if tuple(state[n].shape) != tuple(t.shape):
                raise KeyError(f"EMA state mismatch: {n} has shape {tuple(state[n].shape)}, expected {tuple(t.shape)}")
            t.copy_(state[n])
