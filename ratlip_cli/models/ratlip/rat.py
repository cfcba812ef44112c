"""Recurrent Affine Transformation (RAT-GAN, arXiv 2204.10482) and the plain conditional affine.

An affine layer scales and shifts a feature map channel-wise: ``gamma * x + beta``, with gamma and
beta from two small MLPs (``Linear(in, C) -> ReLU -> Linear(C, C)``; the last layer starts at
gamma = 1, beta = 0, so every affine layer is the identity at initialisation).

What the MLPs read:

- plain (h = 0: DF-GAN/GALIP's affine, and RATLIP without RAT): the condition ``c = concat(z, s)``.
- ``mode: recurrent`` (h > 0, the correct RAT, the default): the LSTM output ``h_t`` only, as in
  RAT-GAN and the authors' code. ``h_t`` is the hidden state of ONE ``nn.LSTMCell(cond_dim, h)``
  shared by all RAT affine layers; its state (h, c) is carried per sample from each affine layer to
  the next in forward order, starting from ``(h0, c0) = (Linear(z), Linear(z))``, and the condition
  c is the LSTM input at every step. Every sample's gamma/beta depend on that sample only.
- ``mode: authors`` (h > 0): the authors' released ``Affine_rnn``, kept to reproduce their
  numbers and import their checkpoints. Each affine layer owns its own
  ``nn.LSTM(cond_dim, h, batch_first=True)`` called on ``c.unsqueeze(0)``: the mini-batch is read
  as ONE sequence of length B, and the final hidden state ``h_n`` (1 x h) feeds the MLPs, so EVERY
  sample of the batch gets the same gamma and beta, computed from all the batch's conditions in
  order. No state passes between affine layers.

The LSTM input never depends on the feature maps, so all hidden states of one forward are computed
up front (`RATRecurrence.forward`); the affine layers then take them in order from an `AffineFeed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(in_dim: int, channels: int, last_bias: float) -> nn.Sequential:
    mlp = nn.Sequential(nn.Linear(in_dim, channels), nn.ReLU(), nn.Linear(channels, channels))
    nn.init.zeros_(mlp[2].weight)
    nn.init.constant_(mlp[2].bias, last_bias)
    return mlp


@dataclass
class AffineRecord:
    """One affine layer's output during a traced forward (for inspection and tests)."""

    name: str
    gamma: torch.Tensor
    beta: torch.Tensor
    recurrent: bool


@dataclass
class AffineFeed:
    """What the affine layers of one generator forward read: the condition and the RAT states.

    RAT layers take the next state from `states` in forward order; `trace`, when a list, receives an
    `AffineRecord` per affine layer.
    """

    cond: torch.Tensor
    states: list[torch.Tensor] = field(default_factory=list)
    trace: list[AffineRecord] | None = None
    used: int = 0

    def next_state(self) -> torch.Tensor:
        if self.used >= len(self.states):
            raise RuntimeError("more RAT affine layers ran than RAT states were computed")
        state = self.states[self.used]
        self.used += 1
        return state

    def check_consumed(self) -> None:
        if self.used != len(self.states):
            raise RuntimeError(f"{len(self.states)} RAT states computed but {self.used} used")


class ConditionalAffine(nn.Module):
    """``gamma(in) * x + beta(in)`` with in = c (plain, state_dim 0) or the RAT state h_t (state_dim h)."""

    def __init__(self, cond_dim: int, channels: int, state_dim: int = 0) -> None:
        super().__init__()
        self.state_dim = state_dim
        in_dim = state_dim if state_dim else cond_dim
        self.fc_gamma = _mlp(in_dim, channels, 1.0)
        self.fc_beta = _mlp(in_dim, channels, 0.0)
        self.trace_name = ""

    @property
    def recurrent(self) -> bool:
        return self.state_dim > 0

    def forward(self, x: torch.Tensor, feed: AffineFeed) -> torch.Tensor:
        # A RAT state is (B, h) in recurrent mode and (1, h) in authors mode (broadcast to the batch).
        inp = feed.next_state().to(feed.cond.dtype) if self.state_dim else feed.cond
        gamma = self.fc_gamma(inp)
        beta = self.fc_beta(inp)
        if feed.trace is not None:
            feed.trace.append(AffineRecord(self.trace_name, gamma.detach(), beta.detach(), self.recurrent))
        # beta + x * gamma in one pass over x (no intermediate product tensor).
        return torch.addcmul(beta[:, :, None, None], x, gamma[:, :, None, None])


class AffineFusion(nn.Module):
    """DF-GAN's fusion block: two (affine -> LeakyReLU(0.2)) steps (a "RAT fusion" when recurrent)."""

    def __init__(self, cond_dim: int, channels: int, state_dim: int = 0) -> None:
        super().__init__()
        self.affine0 = ConditionalAffine(cond_dim, channels, state_dim)
        self.affine1 = ConditionalAffine(cond_dim, channels, state_dim)

    def forward(self, x: torch.Tensor, feed: AffineFeed) -> torch.Tensor:
        # In place: each affine returns a fresh tensor that its backward does not need.
        x = F.leaky_relu(self.affine0(x, feed), 0.2, inplace=True)
        return F.leaky_relu(self.affine1(x, feed), 0.2, inplace=True)


class RATRecurrence(nn.Module):
    """The recurrent part of RAT: produces one state (B, hidden) per RAT affine layer, in order.

    `reset_each_layer` is a debugging switch (not a config key): when True every step starts again
    from (h0, c0) instead of the carried state, which shows that the carried state matters.
    """

    def __init__(self, cond_dim: int, z_dim: int, hidden: int, num_layers: int, mode: str = "recurrent") -> None:
        super().__init__()
        if mode not in ("recurrent", "authors"):
            raise ValueError(f"unknown RAT mode {mode!r}")
        self.hidden = hidden
        self.num_layers = num_layers
        self.mode = mode
        self.reset_each_layer = False
        active = hidden > 0 and num_layers > 0
        if active and mode == "recurrent":
            self.cell = nn.LSTMCell(cond_dim, hidden)
            self.init_h = nn.Linear(z_dim, hidden)
            self.init_c = nn.Linear(z_dim, hidden)
        elif active:
            # The authors' defect: an independent LSTM per affine layer (see the module docstring).
            self.lstms = nn.ModuleList(nn.LSTM(cond_dim, hidden, batch_first=True) for _ in range(num_layers))

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> list[torch.Tensor]:
        if self.hidden == 0 or self.num_layers == 0:
            return []
        if self.mode == "authors":
            # c.unsqueeze(0) with batch_first=True: ONE sequence whose steps are the samples; h_n is
            # (1, 1, h) and squeeze(0) gives the (1, h) state every sample shares.
            return [lstm(cond.unsqueeze(0))[1][0].squeeze(0) for lstm in self.lstms]
        h0, c0 = self.init_h(z), self.init_c(z)
        h, c = h0, c0
        states = []
        for _ in range(self.num_layers):
            if self.reset_each_layer:
                h, c = h0, c0
            h, c = self.cell(cond, (h, c))
            states.append(h)
        return states
