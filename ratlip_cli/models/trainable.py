"""The trainable (non-CLIP) weights of a module, for every family.

The frozen CLIP backbone is registered inside the generator and the discriminator (so `.to()`
moves it), but it is never trained or saved with them: every helper here leaves out whatever
lives under a `ClipBackbone`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ratlip_cli.errors import RatlipError
from ratlip_cli.models.common.clip_backbone import ClipBackbone


def _frozen_prefixes(module: nn.Module) -> list[str]:
    """State-dict prefixes of every ClipBackbone inside `module` ("" when `module` is one)."""
    return [
        (name + ".") if name else ""
        for name, m in module.named_modules(remove_duplicate=False)
        if isinstance(m, ClipBackbone)
    ]


def _is_frozen_key(key: str, prefixes: Sequence[str]) -> bool:
    return any(key.startswith(p) for p in prefixes)


def _backbone_param_ids(module: nn.Module) -> set[int]:
    return {id(p) for m in module.modules() if isinstance(m, ClipBackbone) for p in m.parameters()}


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimiser should get: all of `module`'s, minus the frozen CLIP ones.

    This does not look at `requires_grad`, so it is stable when a training loop switches a
    network's gradients off and on (use `set_trainable` for that).
    """
    frozen = _backbone_param_ids(module)
    return [p for p in module.parameters() if id(p) not in frozen]


def set_trainable(module: nn.Module, flag: bool) -> nn.Module:
    """Switch gradients of `module`'s own parameters on or off; the frozen CLIP stays frozen.

    Prefer this to `module.requires_grad_(flag)`, which would also unfreeze the CLIP inside it.
    """
    for p in trainable_parameters(module):
        p.requires_grad_(flag)
    return module


def trainable_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` without the frozen CLIP weights (BatchNorm statistics are kept)."""
    prefixes = _frozen_prefixes(module)
    if "" in prefixes:
        return {}
    return {k: v for k, v in module.state_dict().items() if not _is_frozen_key(k, prefixes)}


def load_trainable_state_dict(module: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Load weights saved by `trainable_state_dict`; the frozen CLIP inside `module` is untouched.

    With `strict`, missing or unexpected keys and shape mismatches raise a `RatlipError` (usually a
    checkpoint made with another model config, e.g. a different model.rat.hidden).
    """
    expected = trainable_state_dict(module)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if strict and (missing or unexpected or mismatched):
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise RatlipError(
            f"the saved weights do not fit this {type(module).__name__} ({'; '.join(parts)}); "
            "were they made with another model config (e.g. model.rat.hidden, model.ngf, clip.arch)?"
        )
    usable = {k: v for k, v in state.items() if k in expected and k not in mismatched}
    module.load_state_dict(usable, strict=False)
