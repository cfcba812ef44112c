"""Map state dicts of the released DM-GAN / AttnGAN code onto ratlip's modules (and back).

Only the discriminators' spectral-normalised layers are named differently: the reference wraps a
conv in its own ``SpectralNorm`` module (``X.module.weight_bar`` / ``weight_u`` / ``weight_v``),
ratlip uses torch's parametrisation (``X.parametrizations.weight.original`` / ``.0._u`` / ``.0._v``).
Every other key (the generator, the text encoder, the projections) is the same.
"""

from __future__ import annotations

import torch

_RENAMES = (
    (".module.weight_bar", ".parametrizations.weight.original"),
    (".module.weight_u", ".parametrizations.weight.0._u"),
    (".module.weight_v", ".parametrizations.weight.0._v"),
    (".module.bias", ".bias"),
)


def from_reference(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A reference state dict with ratlip's key names."""
    out = {}
    for key, value in state.items():
        for old, new in _RENAMES:
            if key.endswith(old):
                key = key[: -len(old)] + new
                break
        out[key] = value
    return out
