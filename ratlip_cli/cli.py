"""The `ratlip` command line: parses options, resolves the config and delegates to one function per command."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from ratlip_cli import __version__
from ratlip_cli.console import console, err_console
from ratlip_cli.errors import RatlipError

app = typer.Typer(
    name="ratlip",
    help="Train, sample, evaluate and ablate RATLIP text-to-image GANs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

PresetArg = Annotated[
    Optional[str],
    typer.Argument(help="Preset (dataset) name: cub, oxford, celeba-tiny, coco, shapes or tiny."),
]
ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", help="A YAML file of config keys, applied after the preset."),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        help="Override one config key, e.g. --set train.batch_size=8 or --set model.rat.hidden=0 (repeatable).",
    ),
]
DeviceOpt = Annotated[
    Optional[str],
    typer.Option("--device", help="cpu, cuda or cuda:N; default: CUDA when present, else CPU."),
]


def friendly(fn):
    """Turn RatlipError into a one-line message and exit code 2, and Ctrl-C into exit code 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RatlipError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]")
            raise typer.Exit(130) from None

    return wrapper


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"ratlip {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Train, sample, evaluate and ablate RATLIP text-to-image GANs."""


def _resolve(preset: Optional[str], config: Optional[Path], sets: Optional[list[str]]):
    from ratlip_cli.config import resolve_config

    return resolve_config(preset, config, sets)


@app.command()
@friendly
def info(
    preset: PresetArg = "cub",
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Show versions, devices, and where CLIP and Inception weights would come from."""
    from ratlip_cli.info import show_info

    show_info(_resolve(preset, config, sets))


@app.command()
@friendly
def prepare() -> None:
    """Turn a raw dataset (CUB, Oxford-102, CelebA-tiny, COCO, a captioned folder) or `shapes` into ratlip's format."""
    raise RatlipError("`ratlip prepare` is not implemented yet")


@app.command()
@friendly
def train(
    preset: PresetArg = "shapes",
    config: ConfigOpt = None,
    sets: SetOpt = None,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print the resolved config as YAML and exit.")
    ] = False,
) -> None:
    """Train a RATLIP model on a prepared dataset (default preset: the built-in `shapes`)."""
    cfg = _resolve(preset, config, sets)
    if print_config:
        from ratlip_cli.config import to_yaml

        console.print(to_yaml(cfg), end="", highlight=False, markup=False)
        return
    raise RatlipError("`ratlip train` is not implemented yet")


@app.command()
@friendly
def sample() -> None:
    """Generate captioned image grids from prompts with a trained run's EMA generator."""
    raise RatlipError("`ratlip sample` is not implemented yet")


@app.command(name="eval")
@friendly
def eval_() -> None:
    """Compute FID, KID, CLIP score and CLIP R-precision for a run or a folder of images."""
    raise RatlipError("`ratlip eval` is not implemented yet")


@app.command()
@friendly
def ablate() -> None:
    """Sweep the RAT hidden size h (the paper's Table II) as one resumable command."""
    raise RatlipError("`ratlip ablate` is not implemented yet")


@app.command()
@friendly
def bench() -> None:
    """Measure generator and training-step speed, memory and FLOPs."""
    raise RatlipError("`ratlip bench` is not implemented yet")


def main() -> None:
    """Console-script entry point."""
    app()
