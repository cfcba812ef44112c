"""What `ratlip train` does with its options (the Typer function in cli.py only parses them)."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ratlip_cli import dist
from ratlip_cli.config import QUIET_NOTES_ENV, Config, resolve_config, to_yaml
from ratlip_cli.console import console
from ratlip_cli.errors import RatlipError
from ratlip_cli.train.loop import ResumePoint

DEFAULT_PRESET = "shapes"


def torchrun_argv(
    gpus: int,
    preset: Optional[str],
    config: Optional[Path],
    sets: list[str],
    resume: Optional[Path],
    device: Optional[str],
    precision: Optional[str],
) -> list[str]:
    """The command that runs this training as ``gpus`` processes on this node through torchrun."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
            "-m", "ratlip_cli", "train"]
    if preset:
        argv.append(preset)
    if config:
        argv += ["--config", str(config)]
    for s in sets:
        argv += ["--set", s]
    if resume:
        argv += ["--resume", str(resume)]
    if device:
        argv += ["--device", device]
    if precision:
        argv += ["--precision", precision]
    return argv


def _check_gpus(gpus: int, device: Optional[str]) -> None:
    import torch

    if dist.launched_by_torchrun():
        raise RatlipError("--gpus launches torchrun itself; under torchrun, drop --gpus")
    if gpus < 1:
        raise RatlipError(f"--gpus must be at least 1, got {gpus}")
    cpu = (device or "").startswith("cpu")
    if cpu:
        return
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > found:
        hint = " (for CPU processes with the gloo backend pass --device cpu)" if found == 0 else ""
        raise RatlipError(f"--gpus {gpus} needs {gpus} CUDA GPUs; this machine has {found}{hint}")


def build_config(
    preset: Optional[str],
    config: Optional[Path],
    sets: list[str],
    resume: Optional[Path],
    device: Optional[str],
    precision: Optional[str],
) -> tuple[Config, ResumePoint | None]:
    """The resolved config (preset/file/--set for a new run, the run's own config for --resume) and
    the resume point (the run's newest checkpoint, read here once and handed on to `train`)."""
    from ratlip_cli.train.loop import resume_config, resume_point

    extra = list(sets)
    if device:
        extra.append(f"train.device={device}")
    if precision:
        extra.append(f"train.precision={precision}")
    if resume is None:
        return resolve_config(preset or DEFAULT_PRESET, config, extra), None
    point = resume_point(resume)
    cfg = resume_config(point, config, extra)
    if preset and preset != cfg.preset:
        raise RatlipError(
            f"--resume {resume} continues a run of preset '{cfg.preset or '(none)'}', not '{preset}'; "
            "drop the preset argument"
        )
    return cfg, point


@dataclass
class TrainOptions:
    """Everything `ratlip train` was asked for (the CLI fills this in, as for every command)."""

    preset: Optional[str] = None
    config: Optional[Path] = None
    sets: list[str] = field(default_factory=list)
    resume: Optional[Path] = None
    device: Optional[str] = None
    precision: Optional[str] = None
    gpus: Optional[int] = None
    print_config: bool = False


def run_train_command(opts: TrainOptions) -> int:
    """Run `ratlip train`; returns the process exit code (128 + signal number when stopped by a signal)."""
    preset, config, resume, device, precision, gpus = (opts.preset, opts.config, opts.resume, opts.device,
                                                       opts.precision, opts.gpus)
    sets, print_config = list(opts.sets or []), opts.print_config
    cfg, point = build_config(preset, config, sets, resume, device, precision)
    if print_config:
        console.print(to_yaml(cfg), end="", highlight=False, markup=False)
        return 0
    if gpus is not None and gpus != 1:
        _check_gpus(gpus, device or (cfg.train.device if cfg.train.device != "auto" else None))
        argv = torchrun_argv(gpus, preset, config, sets, resume, device, precision)
        console.print(f"launching {gpus} processes: {' '.join(argv[1:])}", highlight=False, soft_wrap=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os.environ[QUIET_NOTES_ENV] = "1"  # this process printed the config's notes; its workers do not
        os.execv(argv[0], argv)
    from ratlip_cli.train.loop import train

    result = train(cfg, resume=point)
    if result.stopped_by in ("SIGINT", "SIGTERM"):
        return 128 + int(getattr(signal, result.stopped_by))
    return 0
