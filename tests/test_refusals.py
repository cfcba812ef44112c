"""Refusals instead of silent drops: the rules are listed in --help, defaults never trip them, and
what a --resume may change is really applied."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ratlip_cli import refusals
from ratlip_cli.cli import app
from ratlip_cli.config import resolve_config
from ratlip_cli.train import resume_config, train
from ratlip_cli.train.checkpoint import latest_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("command", ["info", "prepare", "train", "sample", "eval", "ablate", "bench"])
def test_help_lists_every_rule_of_the_command(command):
    text = " ".join(CliRunner().invoke(app, [command, "--help"], terminal_width=400).output.split())
    assert "Refused instead of ignored:" in text
    for rule in refusals.RULES.get(command, []):
        assert rule.situation in text and rule.why in text
    for allowed, _why in refusals.CONFIG_KEYS.get(command, {}).values():
        assert all(a in text for a in allowed)


def test_defaults_never_trip_a_rule(tmp_path):
    """`sample --interpolate` has --n and --steps defaults, `ablate --merge` has --hidden's: neither is refused."""
    result = CliRunner().invoke(app, ["ablate", "--merge", str(tmp_path / "a")])
    assert result.exit_code == 2 and "is not an ablation folder" in result.output
    result = CliRunner().invoke(app, ["sample", "--interpolate", "a", "b", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "cannot be used" not in result.output


def test_check_keys_prefixes_and_own_options():
    refusals.check_keys("eval", ["eval.num", "data.root"], "run")
    with pytest.raises(Exception, match="data.root would be ignored"):
        refusals.check_keys("eval", ["data.root"], "folder")
    refusals.check_keys("bench", ["model.ngf", "train.lr_g"])
    with pytest.raises(Exception, match="use --hidden"):
        refusals.check_keys("bench", ["model.rat.hidden"])
    assert refusals.resume_refusals(["model.ngf", "train.max_steps", "train.seed", "clip.arch"]) == [
        "model.ngf", "train.seed", "clip.arch"]


def test_resume_applies_new_learning_rates(tmp_path):
    """The optimiser states in a checkpoint carry the old lr; a --resume with new ones must use them."""
    from ratlip_cli.data import generate_shapes

    generate_shapes(tmp_path / "data", size=32, train_per_combo=1, test_per_combo=1, novel_per_combo=1)
    cfg = resolve_config("tiny", overrides=[f"train.runs_dir={tmp_path / 'runs'}", f"data.root={tmp_path / 'data'}",
                                            "train.name=lr", "train.max_steps=2", "train.sample_every=0"])
    run = train(cfg).run_dir
    again = resume_config(run, overrides=["train.max_steps=3", "train.lr_g=3e-5", "train.lr_d=7e-5",
                                          "train.betas=[0.5, 0.99]"])
    train(again, resume=run)
    state = latest_checkpoint(run / "checkpoints")[1]
    assert state["step"] == 3
    assert [g["lr"] for g in state["opt_g"]["param_groups"]] == [3e-5]
    assert [g["lr"] for g in state["opt_d"]["param_groups"]] == [7e-5]
    assert tuple(state["opt_g"]["param_groups"][0]["betas"]) == (0.5, 0.99)
