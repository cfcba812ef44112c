"""`train.compile`: whether the training step runs its generator under `torch.compile`, and why.

Measured (docs/benchmarks.md): on an H200 `torch.compile` made the bf16 generator 1.67x faster and
halved its memory; on the project's CPUs the generator alone gained nothing (fp32 3.69 against 3.73
images/s eager, bf16 slower) and inside the tiny step 5-9% after a first compile of 304 s (33 s with
a warm inductor cache), which a 15-minute CPU run does not earn back. So ``auto`` compiles on CUDA only. Only the
generator is compiled: MA-GP's double backward through D does not compile (AOTAutograd has no
double backward), so D, the head and MA-GP stay eager.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

import torch
from torch import nn

COMPILE_CHOICES = ("none", "generator", "auto")


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile (inductor) cannot run on ``device`` here, or None when it can."""
    try:
        import torch._dynamo as dynamo
    except ImportError as exc:  # a torch build without dynamo
        return f"torch._dynamo does not import ({exc})"
    if not dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "triton is not installed (inductor needs it on CUDA)"
    elif device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "no C++ compiler on PATH (inductor needs one on CPU)"
    return None


def compile_decision(setting: str, device: torch.device) -> tuple[bool, str]:
    """(compile the generator?, the one-line reason) for ``train.compile`` = setting on ``device``."""
    if setting == "none":
        return False, "train.compile=none: generator eager"
    if setting == "auto" and device.type != "cuda":
        return False, (f"train.compile=auto: generator eager on {device.type} (torch.compile showed no gain on "
                       "CPU, docs/benchmarks.md); --set train.compile=generator compiles it anyway")
    why_not = compile_unavailable(device)
    if why_not is not None:
        return False, f"train.compile={setting}: generator eager: {why_not}"
    return True, (f"train.compile={setting}: generator compiled (torch.compile, inductor; the first steps "
                  "compile it); discriminator and MA-GP eager")


def generator_runner(generator: nn.Module, compile_it: bool) -> Callable[..., torch.Tensor]:
    """What the step calls as G(z, s): a compiled wrapper of ``generator`` (same parameters; the module
    itself, its EMA copy and its checkpoints stay uncompiled) or the module itself."""
    return torch.compile(generator) if compile_it else generator
