"""Shared fixtures: tiny random CLIP models and the tiny config, so no test needs real weights."""

from __future__ import annotations

import pytest
import torch

from ratlip_cli.config import Config, resolve_config
from ratlip_cli.weights import load_clip


@pytest.fixture
def tiny_cfg(tmp_path) -> Config:
    """The `tiny` preset with runs and data redirected into the test's temp folder."""
    return resolve_config(
        "tiny",
        overrides=[f"train.runs_dir={tmp_path / 'runs'}", f"data.root={tmp_path / 'data'}"],
    )


@pytest.fixture(scope="session")
def tiny_clip():
    """A random-initialised tiny open_clip model and its tokenizer (seeded, shared by the session)."""
    torch.manual_seed(0)
    model, tokenizer = load_clip("ratlip-tiny", "random")
    return model, tokenizer


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's training tests on one torch thread (faster for tiny models on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
