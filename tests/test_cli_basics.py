"""The CLI's shape: help for every command, version, info, --print-config, one-line errors."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from ratlip_cli import __version__
from ratlip_cli.cli import app

runner = CliRunner()
COMMANDS = ["prepare", "train", "sample", "eval", "ablate", "bench", "info"]


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output
    for name in COMMANDS:
        sub = runner.invoke(app, [name, "--help"])
        assert sub.exit_code == 0, name
        assert "Usage" in sub.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_print_config_is_the_resolved_yaml():
    result = runner.invoke(app, ["train", "cub", "--print-config", "--set", "model.rat.hidden=16"])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.output)
    assert data["preset"] == "cub" and data["model"]["rat"]["hidden"] == 16
    assert data["data"]["root"] == "data/cub" and data["clip"]["arch"] == "ViT-B-32-quickgelu"


def test_bad_key_is_one_line_error():
    result = runner.invoke(app, ["train", "cub", "--print-config", "--set", "train.nope=1"])
    assert result.exit_code == 2
    assert "unknown config key 'train.nope'" in result.output
    assert "Traceback" not in result.output


def test_info_reports_versions_and_sources(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["info", "tiny"])
    assert result.exit_code == 0, result.output
    for word in ("torch", "open_clip_torch", "clean-fid", "random initialisation", "Inception"):
        assert word in result.output
