"""Names are names (issue 26): every user-given name that becomes a file or folder is one path component."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ratlip_cli.cli import app
from ratlip_cli.config import from_dict, resolve_config, to_dict
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import check_name

runner = CliRunner()
BAD = ["", ".", "..", "../../x", "a/b", "/abs", "a\\b", "a\0b", "a\nb", ".hidden", " x", "x ", "\t"]
GOOD = ["x", "run-1", "galip_cub.s0", "größe", "a b", "x..y", "007"]


@pytest.mark.parametrize("name", BAD)
def test_check_name_refuses_anything_but_one_component(name):
    with pytest.raises(RatlipError, match=r"^train\.name must be one folder name, got ") as err:
        check_name(name, "train.name")
    assert "\n" not in str(err.value).replace(repr(name), "")  # one line (the repr escapes a newline)


@pytest.mark.parametrize("name", GOOD)
def test_check_name_keeps_plain_names(name):
    assert check_name(name, "train.name") == name


def _one_error_line(result, key: str, shown: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {key} must be one folder name, got {shown}"), result.output


def _nothing_written(root: Path, allowed: set[str]) -> None:
    """Only the files the test itself made exist under ``root`` (and nothing beside it)."""
    made = {str(p.relative_to(root)) for p in root.rglob("*")}
    assert made <= allowed, made - allowed


def test_train_refuses_a_run_name_that_leaves_runs(tmp_path):
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    result = runner.invoke(app, ["train", "tiny", "--set", f"train.runs_dir={deep / 'runs'}",
                                 "--set", f"data.root={tmp_path / 'data'}", "--set", "train.name=../../x",
                                 "--set", "train.max_steps=1"])
    _one_error_line(result, "train.name", "'../../x'")
    _nothing_written(tmp_path, {"a", "a/b"})


def test_train_refuses_a_run_name_from_a_config_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"train:\n  runs_dir: {tmp_path / 'runs'}\n  name: .hidden\n", encoding="utf-8")
    result = runner.invoke(app, ["train", "tiny", "--config", str(config), "--set", f"data.root={tmp_path / 'd'}"])
    _one_error_line(result, "train.name", "'.hidden'")
    _nothing_written(tmp_path, {"c.yaml"})


def test_a_data_name_is_a_folder_name_for_every_command(tmp_path):
    # data.name names default folders (<train.runs_dir>/damsm-<data.name>): pretrain-text would write there.
    result = runner.invoke(app, ["pretrain-text", "tiny", "--set", f"train.runs_dir={tmp_path / 'runs'}",
                                 "--set", "data.name=../../x", "--print-config"])
    _one_error_line(result, "data.name", "'../../x'")
    result = runner.invoke(app, ["train", "tiny", "--set", "data.name=a/b", "--print-config"])
    _one_error_line(result, "data.name", "'a/b'")
    _nothing_written(tmp_path, set())


def test_import_refuses_a_name_that_leaves_runs(tmp_path):
    result = runner.invoke(app, ["import", str(tmp_path / "missing.pth"), "--name", "../../x",
                                 "--set", f"train.runs_dir={tmp_path / 'runs'}"])
    _one_error_line(result, "--name", "'../../x'")
    result = runner.invoke(app, ["import", str(tmp_path / "missing.pth"), "--name", "..",
                                 "--set", f"train.runs_dir={tmp_path / 'runs'}"])
    _one_error_line(result, "--name", "'..'")
    _nothing_written(tmp_path, set())


def test_ablate_refuses_a_swept_name_before_anything_trains(tmp_path):
    out = tmp_path / "abl"
    result = runner.invoke(app, ["ablate", "tiny", "--sweep", "data.name=shapes,../../x", "--steps", "1",
                                 "--metrics", "shapes", "--out", str(out), "--set", f"data.root={tmp_path / 'd'}"])
    assert result.exit_code == 2, result.output
    assert "data.name must be one folder name, got '../../x'" in result.output
    _nothing_written(tmp_path, set())


def test_a_preset_argument_is_a_shipped_presets_name(tmp_path):
    result = runner.invoke(app, ["train", "../presets/tiny", "--print-config"])
    assert result.exit_code == 2 and "unknown preset '../presets/tiny'" in result.output


def test_a_saved_config_with_a_path_for_a_name_is_refused():
    data = to_dict(resolve_config("tiny"))
    data["train"]["name"] = "../x"
    with pytest.raises(RatlipError, match="train.name must be one folder name"):
        from_dict(data)
    data["train"]["name"] = ""  # empty: the default <preset>-<time>
    assert from_dict(data).train.name == ""


def test_resolve_config_refuses_a_nul_in_a_name(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text('train:\n  name: "a\\0b"\n', encoding="utf-8")
    with pytest.raises(RatlipError, match="control character"):
        resolve_config("tiny", config)
