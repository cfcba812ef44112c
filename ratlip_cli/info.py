"""`ratlip info`: versions, devices and weight sources, so users know what will work before they start."""

from __future__ import annotations

from rich.table import Table

from ratlip_cli import __version__
from ratlip_cli.clip_pretrain import IN_DOMAIN, in_domain_clip_path
from ratlip_cli.config import Config
from ratlip_cli.console import console
from ratlip_cli.environment import environment
from ratlip_cli.weights import clip_source, inception_source


def _clip_source(cfg: Config, arch: str, weights: str) -> tuple[str, bool]:
    if weights != IN_DOMAIN:
        return clip_source(arch, weights, cfg.clip.cache_dir)
    path = in_domain_clip_path(cfg)
    state = "cached" if path.is_file() else "pretrained on first use (`ratlip pretrain-clip`), then cached"
    return f"in-domain: {arch} trained on {cfg.data.root} ({state}) at {path}", True


def show_info(cfg: Config) -> None:
    """Print a table of versions, devices and weight availability for the given config."""
    table = Table(title=f"ratlip {__version__}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in environment().items():
        if key != "ratlip":
            table.add_row(key, value)
    ok = "[green]available[/green]"
    missing = "[red]unavailable[/red]"
    where, have = _clip_source(cfg, cfg.clip.arch, cfg.clip.weights)
    table.add_row(f"model CLIP ({cfg.clip.arch})", f"{where}: {ok if have else missing}")
    where, have = _clip_source(cfg, cfg.eval.clip_arch, cfg.eval.clip_weights)
    table.add_row(f"eval CLIP ({cfg.eval.clip_arch})", f"{where}: {ok if have else missing}")
    where, have = inception_source(cfg.eval.inception)
    table.add_row("Inception-V3 (FID)", f"{where}: {ok if have else missing}")
    console.print(table)
