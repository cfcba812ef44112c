"""The release's fp16 recipe (`train.fp16_recipe: release`), next to ours, on CPU autocast fp16.

Source: OxygenLu/RATLIP code/src/train.py (two `torch.cuda.amp.GradScaler(growth_interval=
args.growth_interval)`), code/cfg/birds.yml (`growth_interval: 2000`, `scaler_min: 64`) and
code/lib/modules.py `train` (`scaler_D.step; scaler_D.update(); if scaler_D.get_scale() <
args.scaler_min: scaler_D.update(16384.0)`, the same for G, and G steps whatever D did).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ratlip_cli.config import resolve_config
from ratlip_cli.models.ratlip.step import RELEASE_GROWTH_INTERVAL, _release_update
from ratlip_cli.train.loop import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(tmp_path: Path, data_root: Path, recipe: str) -> Trainer:
    cfg = resolve_config("tiny", overrides=[f"train.runs_dir={tmp_path / 'runs'}", f"data.root={data_root}",
                                            f"train.name={recipe}", "train.precision=amp_fp16",
                                            f"train.fp16_recipe={recipe}"])
    trainer = Trainer(cfg)
    trainer.setup()
    return trainer


def test_release_scalers_reset_below_the_minimum():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=100.0, growth_interval=RELEASE_GROWTH_INTERVAL)
    (scaler.scale(p.sum()) * float("inf")).backward()
    scaler.step(opt)
    assert _release_update(scaler) is True  # skipped: 100 -> 50, below 64 -> reset
    assert scaler.get_scale() == 16384.0 and torch.equal(p.detach(), torch.ones(3))
    opt.zero_grad()
    scaler.scale(p.sum()).backward()
    scaler.step(opt)
    assert _release_update(scaler) is False and scaler.get_scale() == 16384.0  # grows after 2000 good steps only
    assert torch.allclose(p.detach(), torch.full((3,), 0.9))


def test_release_recipe_has_a_scaler_per_optimiser_and_checkpoints_them(tmp_path, data_root):
    trainer = _trainer(tmp_path, data_root, "release")
    step = trainer.step_fn
    assert step.release_fp16 and step.scaler_d is not step.scaler_g
    assert step.scaler_d.get_growth_interval() == step.scaler_g.get_growth_interval() == 2000
    batch = next(iter(trainer._loader()))
    outs = [trainer.train_step(batch) for _ in range(3)]
    assert any(o.losses is not None and torch.isfinite(o.losses).all() for o in outs)
    state = step.state_dict()
    assert state["scaler_d"]["growth_interval"] == 2000 and state["scaler_g"]["growth_interval"] == 2000
    ours = _trainer(tmp_path, data_root, "ratlip").step_fn
    assert not ours.release_fp16 and "scaler_d" not in ours.state_dict()


def test_release_recipe_skips_d_on_overflow_while_g_steps(tmp_path, data_root):
    trainer = _trainer(tmp_path, data_root, "release")
    step = trainer.step_fn
    batch = next(iter(trainer._loader()))
    d_param = step.d_params[0]
    d_param.register_hook(lambda g: g * float("inf"))  # every D step overflows
    d_before = [p.detach().clone() for p in step.d_params]
    g_before = [p.detach().clone() for p in step.g_params]
    scale_d = step.scaler_d.get_scale()
    out = step(batch)
    assert all(torch.equal(a, p.detach()) for a, p in zip(d_before, step.d_params))  # D skipped
    assert any(not torch.equal(a, p.detach()) for a, p in zip(g_before, step.g_params))  # G stepped
    assert step.scaler_d.get_scale() == scale_d / 2 and out.losses is not None


def test_release_recipe_is_refused_where_it_would_be_ignored(tmp_path, data_root):
    from ratlip_cli.errors import RatlipError

    with pytest.raises(RatlipError, match="precision=amp_fp16"):
        resolve_config("tiny", overrides=["train.fp16_recipe=release"])  # fp32: no scaler to follow a recipe
    cfg = resolve_config("tiny", overrides=[f"train.runs_dir={tmp_path / 'runs'}", f"data.root={data_root}",
                                            "train.name=acc", "train.precision=amp_fp16",
                                            "train.fp16_recipe=release", "train.accumulate=2"])
    with pytest.raises(RatlipError, match="one-batch step"):
        Trainer(cfg).setup()
