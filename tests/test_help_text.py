"""Help text is shown as written (issue 26): brackets in help and messages are words, never Rich markup."""

from __future__ import annotations

import inspect
import re

import pytest
import typer
import typer.main
import typer.rich_utils
from typer.testing import CliRunner
from typer.utils import get_params_from_function

from ratlip_cli.cli import app

WIDTH = 200
BRACKETED = re.compile(r"\[[^\[\]\n]+\]")
BOX = re.compile(r"[│╭╮╰╯─]")


def _flat(text: str) -> str:
    """Text without panel borders, whitespace collapsed (a wrapped phrase reads as one line)."""
    return " ".join(BOX.sub(" ", text).split())


def _param_helps(callback) -> list[str]:
    helps = []
    for param in get_params_from_function(callback).values():
        info = param.default if isinstance(param.default, typer.models.ParameterInfo) else None
        if info is not None and info.help:
            helps.append(info.help)
    return helps


def _sources(typer_app: typer.Typer, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], list[str]]:
    """Every help string as written in the source, per command path (subcommand groups included)."""
    out: dict[tuple[str, ...], list[str]] = {}
    root = [typer_app.info.help or ""]
    if typer_app.registered_callback is not None and typer_app.registered_callback.callback is not None:
        root += [inspect.getdoc(typer_app.registered_callback.callback) or ""]
        root += _param_helps(typer_app.registered_callback.callback)
    out[path] = root
    for info in typer_app.registered_commands:
        name = info.name or typer.main.get_command_name(info.callback.__name__)
        texts = [info.help or inspect.getdoc(info.callback) or "", info.epilog or ""]
        out[(*path, name)] = texts + _param_helps(info.callback)
    for group in typer_app.registered_groups:
        out.update(_sources(group.typer_instance, (*path, group.name or group.typer_instance.info.name)))
    return out


def _click_paths(command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the built command tree (typer's groups hold their subcommands in `commands`)."""
    paths = [path]
    for name, sub in (getattr(command, "commands", None) or {}).items():
        paths += _click_paths(sub, (*path, name))
    return paths


@pytest.fixture()
def wide(monkeypatch):
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", WIDTH)
    monkeypatch.setattr(typer.rich_utils, "FORCE_TERMINAL", False)
    monkeypatch.setattr(typer.rich_utils, "COLOR_SYSTEM", None)


def _help(args: list[str]) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], prog_name="ratlip", env={"COLUMNS": str(WIDTH)})
    assert result.exit_code == 0, result.output
    return result.output


def test_every_bracketed_word_of_every_help_is_printed(wide):
    sources = _sources(app)
    paths = _click_paths(typer.main.get_command(app))
    assert set(paths) == set(sources) and len(paths) > 10  # every registered command (and subcommand) is checked
    checked = 0
    for path in paths:
        shown = _flat(_help(list(path)))
        for text in sources[path]:
            for phrase in BRACKETED.findall(text):
                assert _flat(phrase) in shown, f"ratlip {' '.join(path)} --help lost {phrase!r}"
                checked += 1
        assert "\\[" not in shown, f"ratlip {' '.join(path)} --help shows a hand-escaped bracket"
    assert checked >= 10


def test_demo_extra_and_defaults_read_as_written(wide):
    assert 'pip install -e ".[demo]"' in _flat(_help([]))
    assert 'pip install -e ".[demo]"' in _flat(_help(["demo"]))
    prepare = _flat(_help(["prepare"]))
    assert "[default: the preset's data.root, e.g. data/cub]" in prepare
    assert "[default: 1000]" in prepare


def test_an_error_message_with_brackets_prints_intact(tmp_path):
    run = tmp_path / "runs" / "[x]"
    result = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "[x]" in lines[0], result.output
    assert "Traceback" not in result.output


def test_warnings_and_notices_print_brackets_intact(capsys):
    from ratlip_cli.console import notice, warn

    warn("cannot read runs/[x]/metrics.csv [bold]")
    notice("see runs/[red]/config.yaml")
    err = capsys.readouterr().err
    assert "runs/[x]/metrics.csv [bold]" in err and "runs/[red]/config.yaml" in err
