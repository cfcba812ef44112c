"""Exact comparison of nested training states (tensors, dicts, lists) for the bit-exact resume tests."""

from __future__ import annotations

import torch


def assert_same(a, b, where: str = "") -> None:
    """Assert `a` equals `b` exactly: same keys, same lengths, equal tensors (``where`` names the place)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where
