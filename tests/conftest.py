"""Shared fixtures: tiny random CLIP models and the tiny config, so no test needs real weights."""

from __future__ import annotations

from pathlib import Path

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


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """32 px shapes (the default set), generated once per session and shared: tests must not change it."""
    from ratlip_cli.data import generate_shapes

    root = tmp_path_factory.mktemp("shapes32")
    generate_shapes(root, size=32)
    return root


@pytest.fixture(scope="session")
def encoders_dir(tmp_path_factory, data_root) -> Path:
    """DAMSM encoders pretrained for 2 steps on `data_root` (shared by the DM-GAN-based families' tests)."""
    from ratlip_cli.models.dmgan.pretrain import pretrain_text

    out = tmp_path_factory.mktemp("damsm")
    pretrain_text(resolve_config("tiny", overrides=[f"train.runs_dir={out / 'runs'}", f"data.root={data_root}",
                                                    f"damsm.out={out / 'enc'}", "damsm.max_steps=2"]))
    return out / "enc"
