"""docs/cli.md is the current `--help` of every command (regenerate: python -m ratlip_cli.cli_docs)."""

from __future__ import annotations

import re

import typer
import typer.main

from ratlip_cli import cli_docs
from ratlip_cli.cli import app


def _section(text: str, name: str) -> str:
    """The part of docs/cli.md under the heading of `ratlip NAME`."""
    match = re.search(rf"^## `ratlip {re.escape(name)}`\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"docs/cli.md has no section for `ratlip {name}`"
    return match.group(1)


def test_cli_md_is_current():
    text = cli_docs.DOC_PATH.read_text(encoding="utf-8")
    stale = f"docs/cli.md is stale: run `{cli_docs.REGENERATE}`"
    if cli_docs.renderer_versions() in text:
        assert text == cli_docs.render(), stale
        return
    # Another typer/rich lays the help out differently; still every command and option must be documented.
    group = typer.main.get_command(app)
    for name in cli_docs.command_names(app):
        section = _section(text, name)
        for param in group.commands[name].params:  # type: ignore[attr-defined]
            for flag in param.opts:
                if flag.startswith("-"):
                    assert re.search(rf"{re.escape(flag)}\b", section), f"{name} {flag} missing; {stale}"


def test_every_command_has_a_section_with_its_options():
    text = cli_docs.render()
    names = cli_docs.command_names(app)
    assert {"train", "sample", "eval", "ablate", "bench", "prepare", "info"} <= set(names)
    for name in names:
        section = _section(text, name)
        assert f"Usage: ratlip {name} [OPTIONS]" in section
        assert "--help" in section
    assert "--resume" in _section(text, "train") and "--interpolate" in _section(text, "sample")
    assert all(len(line) <= cli_docs.WIDTH for line in text.splitlines() if line.startswith(("│", "╭", "╰")))


def test_a_new_option_makes_the_file_stale(tmp_path, monkeypatch):
    path = tmp_path / "cli.md"
    path.write_text(cli_docs.render(), encoding="utf-8")
    assert cli_docs.is_current(path)

    extra = typer.Typer()

    @extra.command()
    def hello(loud: bool = typer.Option(False, "--loud", help="Shout.")) -> None:
        """Say hello."""

    @extra.command()
    def bye() -> None:
        """Say bye."""

    import ratlip_cli.cli as cli_module

    monkeypatch.setattr(cli_module, "app", extra)
    assert not cli_docs.is_current(path)
    assert "--loud" in _section(cli_docs.render(), "hello")
    monkeypatch.setattr(cli_docs, "DOC_PATH", path)
    assert cli_docs.main(["--check"]) == 1
