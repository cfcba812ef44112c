"""A family implies what it needs (issue 26): its own settings fill in what the user did not set."""

from __future__ import annotations

import sys
import types

import pytest
import yaml
from typer.testing import CliRunner

from ratlip_cli import config as config_module
from ratlip_cli.cli import app
from ratlip_cli.config import Config, apply_family_settings, from_dict, resolve_config, to_dict
from ratlip_cli.errors import RatlipError
from ratlip_cli.models import registry
from ratlip_cli.models.galip import GalipFamily
from ratlip_cli.models.registry import family_names, get_family

NOTE = "model.family=galip: model.rat.hidden=0 (GALIP has no RAT)"


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    """Each test sees the notes of its own command (they are printed once per process)."""
    monkeypatch.setattr(config_module, "_shown", set())
    monkeypatch.delenv(config_module.QUIET_NOTES_ENV, raising=False)
    monkeypatch.delenv("RANK", raising=False)


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_galip_alone_trains_galip_with_h0_and_says_so_once():
    result = _invoke("train", "shapes", "--set", "model.family=galip", "--print-config")
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.stdout)
    assert data["model"]["family"] == "galip" and data["model"]["rat"]["hidden"] == 0
    assert result.stderr.count(NOTE) == 1 and result.stderr.strip() == f"notice: {NOTE}"
    assert resolve_config("shapes").model.rat.hidden > 0  # the preset's h, which galip implies away


def test_the_note_is_printed_once_per_process(capsys):
    for _ in range(3):  # e.g. bench and ablate resolve the config more than once
        assert resolve_config("shapes", overrides=["model.family=galip"]).model.rat.hidden == 0
    assert capsys.readouterr().err.count(NOTE) == 1


def test_an_explicit_contradiction_is_one_line_error(tmp_path):
    result = _invoke("train", "shapes", "--set", "model.family=galip", "--set", "model.rat.hidden=64", "--print-config")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model.family=galip sets model.rat.hidden=0"), result.output
    assert "--set gives model.rat.hidden=64" in lines[0]
    config = tmp_path / "galip.yaml"
    config.write_text("model:\n  family: galip\n  rat:\n    hidden: 64\n", encoding="utf-8")
    result = _invoke("train", "shapes", "--config", str(config), "--print-config")
    assert result.exit_code == 2 and f"--config {config} gives model.rat.hidden=64" in result.output
    nested = _invoke("train", "shapes", "--set", "model.family=galip", "--set", "model.rat={hidden: 8}", "--print-config")
    assert nested.exit_code == 2 and "--set gives model.rat.hidden=8" in nested.output


def test_agreeing_or_implied_settings_need_no_note(capsys):
    cfg = resolve_config("shapes", overrides=["model.family=galip", "model.rat.hidden=0"])  # the README's old form
    assert cfg.model.rat.hidden == 0 and NOTE not in capsys.readouterr().err
    resumed = resolve_config(overrides=["train.max_steps=5"], base=cfg)  # a galip run's config: already h = 0
    assert resumed.model.rat.hidden == 0 and NOTE not in capsys.readouterr().err


def test_a_config_file_naming_the_family_alone_implies_the_rest(tmp_path):
    config = tmp_path / "galip.yaml"
    config.write_text("model:\n  family: galip\n", encoding="utf-8")
    assert resolve_config("shapes", config).model.rat.hidden == 0


def test_a_saved_config_that_breaks_the_family_is_refused():
    data = to_dict(resolve_config("shapes", overrides=["model.family=galip"]))
    data["model"]["rat"]["hidden"] = 64
    with pytest.raises(RatlipError, match=r"model.family=galip needs model.rat.hidden=0 \(GALIP has no RAT\), got"):
        from_dict(data)


def test_the_ablation_family_sweep_keeps_giving_each_cell_its_own(tmp_path):
    from ratlip_cli import ablate

    cfg = resolve_config("tiny", overrides=[f"train.runs_dir={tmp_path / 'runs'}", "model.rat.hidden=16"])
    galip = ablate.cell_config(cfg, tmp_path / "abl", "galip", 0, "model.family")
    ratlip = ablate.cell_config(cfg, tmp_path / "abl", "ratlip", 0, "model.family")
    assert galip.model.rat.hidden == 0 and ratlip.model.rat.hidden == 16
    with pytest.raises(RatlipError, match="--sweep model.rat.hidden=8: model.family=galip needs model.rat.hidden=0"):
        ablate.cell_config(galip, tmp_path / "abl", "8", 0)


def test_bench_refuses_a_hidden_size_the_family_forbids():
    result = _invoke("bench", "tiny", "--set", "model.family=galip", "--hidden", "0,64", "--skip-train")
    assert result.exit_code == 2
    assert "--hidden 64: model.family=galip needs model.rat.hidden=0" in result.output


def test_what_each_shipped_family_owns():
    owned = {name: get_family(name).own_settings(Config()) for name in family_names()}
    assert owned["galip"] == {"model.rat.hidden": 0}
    # config.family_settings skips importing the default family because it owns nothing: keep it so.
    assert owned[Config().model.family] == {}
    assert owned["dmgan"] == owned["ecagan"] == owned["caegan"] == {}


def test_a_dmgan_family_changes_nothing_by_itself(capsys):
    cfg = resolve_config("shapes", overrides=["model.family=dmgan"])
    assert cfg.model.rat.hidden == resolve_config("shapes").model.rat.hidden
    assert "notice:" not in capsys.readouterr().err


class CnnFamily(GalipFamily):
    """A stand-in family owning two settings of other types (a string and a boolean)."""

    name = "cnnfam"
    own_settings_why = "a CNN discriminator in NCHW"

    def own_settings(self, cfg) -> dict:
        return {"model.d_backbone": "cnn", "train.channels_last": False}


@pytest.fixture()
def cnn_family(monkeypatch):
    module = types.ModuleType("ratlip_test_cnnfam")
    module.FAMILY = CnnFamily()
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(registry.FAMILIES, "cnnfam", module.__name__)
    return module.FAMILY


def test_another_familys_own_settings_follow_the_same_rule(cnn_family, capsys, tmp_path):
    base = resolve_config("shapes")
    assert base.model.d_backbone == "clip" and base.train.channels_last is True
    cfg = resolve_config("shapes", overrides=["model.family=cnnfam"])
    assert cfg.model.d_backbone == "cnn" and cfg.train.channels_last is False
    err = capsys.readouterr().err
    assert err.count("notice: model.family=cnnfam: model.d_backbone=cnn (a CNN discriminator in NCHW)") == 1
    assert err.count("notice: model.family=cnnfam: train.channels_last=false (a CNN discriminator in NCHW)") == 1
    with pytest.raises(RatlipError, match="model.family=cnnfam sets train.channels_last=false .* "
                                          "--set gives train.channels_last=true"):
        resolve_config("shapes", overrides=["model.family=cnnfam", "train.channels_last=true"])
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  d_backbone: clip\n", encoding="utf-8")
    with pytest.raises(RatlipError, match=f"--config {config} gives model.d_backbone=clip"):
        resolve_config("shapes", config, ["model.family=cnnfam"])
    assert apply_family_settings(Config(), {}) == []  # the default family: nothing to set
