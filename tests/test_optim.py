"""The training speed settings of issue 19.3: fused Adam (same update as torch's loop Adam), the thread
choice and the allocator setting applied by `ratlip train` on CPU."""

from __future__ import annotations

import pytest
import torch

from ratlip_cli.optim import adam, adamw
from ratlip_cli.profiling import apply_cpu_settings
from tolerance import fp32_close

# Fused and loop Adam are different fp32 kernels: each of the 5 steps rounds a parameter at most twice
# (AdamW's decay, the update; the update's own rounding is lr times smaller), on both sides.
DEPTH = 2 * 5


def test_fused_adam_on_cpu_matches_the_loop_version():
    torch.manual_seed(0)
    shapes = [(3, 4), (7,), (2, 2, 3, 3)]
    a = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    fast = adam(a, lr=1e-2, betas=(0.0, 0.9))
    slow = torch.optim.Adam(b, lr=1e-2, betas=(0.0, 0.9), foreach=False)
    assert fast.defaults["fused"] is True
    start = [p.detach().clone() for p in a]
    for _ in range(5):
        grads = [torch.randn(s) for s in shapes]
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        fast.step()
        slow.step()
    for p, q, p0 in zip(a, b, start):
        assert (p - p0).abs().max() > 1e-3  # the steps moved the parameters
        fp32_close(p, q, DEPTH, computations=2)
    # a checkpoint of one loads into the other
    slow.load_state_dict(fast.state_dict())


def test_fused_adamw_keeps_each_groups_weight_decay_and_matches_the_loop_version():
    torch.manual_seed(1)
    a = [torch.nn.Parameter(torch.randn(4, 5)), torch.nn.Parameter(torch.randn(5))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]

    def groups(ps):
        return [{"params": [ps[0]], "weight_decay": 0.1}, {"params": [ps[1]], "weight_decay": 0.0}]

    fast = adamw(groups(a), lr=1e-2, betas=(0.9, 0.98), eps=1e-6)
    slow = torch.optim.AdamW(groups(b), lr=1e-2, betas=(0.9, 0.98), eps=1e-6, foreach=False)
    assert fast.defaults["fused"] is True
    assert [g["weight_decay"] for g in fast.param_groups] == [0.1, 0.0]
    for _ in range(5):
        for p, q in zip(a, b):
            g = torch.randn(p.shape)
            p.grad, q.grad = g.clone(), g.clone()
        fast.step()
        slow.step()
    for p, q in zip(a, b):
        fp32_close(p, q, DEPTH, computations=2)


def test_cpu_settings_set_the_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        text = apply_cpu_settings(threads=1)
        assert torch.get_num_threads() == 1 and text.startswith("1 threads")
        assert ("tuned" in text) or ("default" in text)
    finally:
        torch.set_num_threads(before)


def test_negative_threads_are_refused():
    from ratlip_cli.config import resolve_config
    from ratlip_cli.errors import RatlipError

    with pytest.raises(RatlipError, match="train.threads"):
        resolve_config("tiny", overrides=["train.threads=-1"])
