"""Mixed precision as a choice without branches: `autocast(device, precision)` for `train.precision`."""

from __future__ import annotations

from contextlib import nullcontext

import torch

PRECISION_DTYPES = {"fp32": None, "amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """`torch.autocast` for amp_bf16 / amp_fp16, a no-op context for fp32."""
    dtype = PRECISION_DTYPES[precision]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
