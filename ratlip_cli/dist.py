"""torchrun helpers that are no-ops in a plain process (no `torch.distributed` call without a group).

`init_from_env()` starts the process group when torchrun's variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) are set: NCCL on CUDA, gloo on CPU. Every other helper
works the same in a single process, where rank is 0 and the world has size 1.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as tdist

from ratlip_cli.errors import RatlipError


def is_initialized() -> bool:
    """True when a process group exists."""
    return tdist.is_available() and tdist.is_initialized()


def get_rank() -> int:
    """This process's global rank (0 without a process group)."""
    return tdist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return tdist.get_world_size() if is_initialized() else 1


def get_local_rank() -> int:
    """Rank on this node (torchrun's LOCAL_RANK; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (and in a plain process): the one process that writes files and logs."""
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    """True when torchrun's environment variables say this is one of several workers."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device_type: str, timeout_minutes: float = 30.0) -> bool:
    """Start the process group from torchrun's env vars; returns False (and does nothing) without them.

    ``device_type`` picks the backend: ``nccl`` for cuda, ``gloo`` otherwise.
    """
    if is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    tdist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    return True


def destroy() -> None:
    """Tear down the process group if one exists."""
    if is_initialized():
        tdist.destroy_process_group()


def barrier() -> None:
    """Wait for all processes (no-op in a single process)."""
    if is_initialized():
        tdist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes in place and return it (unchanged in a single process)."""
    if is_initialized() and get_world_size() > 1:
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over processes in place and return it."""
    if is_initialized() and get_world_size() > 1:
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
        tensor.div_(get_world_size())
    return tensor


def any_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True when ``flag`` is true on any process (a consistent decision for all ranks)."""
    if not (is_initialized() and get_world_size() > 1):
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Copy rank ``src``'s ``tensor`` to every process in place."""
    if is_initialized() and get_world_size() > 1:
        tdist.broadcast(tensor, src=src)
    return tensor


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's ``tensor`` along dim 0 (same shape on every rank)."""
    if not (is_initialized() and get_world_size() > 1):
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    tdist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_gather_object(obj):
    """A list of every process's picklable ``obj`` (``[obj]`` in a single process)."""
    if not (is_initialized() and get_world_size() > 1):
        return [obj]
    out = [None] * get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s picklable ``obj`` on every process."""
    if not (is_initialized() and get_world_size() > 1):
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def resolve_device(spec: str | None) -> torch.device:
    """``auto`` -> cuda when present, else cpu; under torchrun with CUDA, this rank's local GPU."""
    spec = (spec or "auto").strip()
    if spec == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(spec)
        except RuntimeError:
            raise RatlipError(f"unknown device '{spec}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RatlipError(f"device '{spec}' requested but CUDA is not available; use --device cpu")
        if launched_by_torchrun():
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        elif dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RatlipError(f"device '{spec}' does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif dev.type not in ("cpu", "mps"):
        raise RatlipError(f"unsupported device '{spec}'; use cpu, cuda or cuda:N")
    return dev


def average_gradients(params: list[torch.nn.Parameter], losses: torch.Tensor) -> torch.Tensor:
    """Average ``params``' gradients (in place) and ``losses`` over processes with one all-reduce.

    Returns the averaged losses (``losses`` itself in a single process). A parameter without a
    gradient takes part as zeros, so every rank sends the same layout.
    """
    world = get_world_size()
    if world == 1:
        return losses
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [losses.to(grads[0].device, torch.float32)])
    all_reduce_sum(flat)
    flat.div_(world)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        chunk = flat[offset : offset + n].view_as(g).to(g.dtype)
        if p.grad is None:
            p.grad = chunk
        else:
            p.grad.copy_(chunk)
        offset += n
    return flat[offset:].to(losses.device)


def average_buffers(buffers: list[torch.Tensor]) -> None:
    """Average floating-point buffers (BatchNorm statistics) over processes in place, in one all-reduce."""
    if get_world_size() == 1 or not buffers:
        return
    flat = torch.cat([b.reshape(-1).float() for b in buffers])
    all_reduce_mean(flat)
    offset = 0
    for b in buffers:
        n = b.numel()
        b.copy_(flat[offset : offset + n].view_as(b).to(b.dtype))
        offset += n
