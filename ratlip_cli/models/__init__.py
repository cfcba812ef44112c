"""RATLIP and GALIP networks (`model.family`) built from the config and an already-loaded open_clip model (no files, no CLI).

    models = build_models(cfg, clip_model)        # clip_model from ratlip_cli.weights.load_clip
    s, _ = models.backbone.encode_text(tokens)
    fake = models.generator(z, s)
    x, pooled = models.discriminator.encode(fake)
    logits = models.head(models.discriminator(x), s)

See docs/architecture.md for the data flow, the RAT design and parameter counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ratlip_cli.config import Config
from ratlip_cli.models.attention import ShuffleAttention
from ratlip_cli.models.clip_backbone import ClipBackbone
from ratlip_cli.models.discriminator import CNNEncoder, ConditionHead, DBlock, Discriminator, discriminator_grid
from ratlip_cli.models.generator import ConvShuffle, GBlock, Generator, PlainConv, RATBlock, g_channels, g_sizes
from ratlip_cli.models.rat import AffineFeed, AffineFusion, AffineRecord, ConditionalAffine, RATRecurrence


@dataclass
class RatlipModels:
    """The four networks of a run; the backbone is shared (frozen) by the generator and the discriminator."""

    backbone: ClipBackbone
    generator: Generator
    discriminator: Discriminator
    head: ConditionHead

    def to(self, device: torch.device | str) -> RatlipModels:
        for module in (self.backbone, self.generator, self.discriminator, self.head):
            module.to(device)
        return self

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator, "head": self.head}


def build_models(cfg: Config, clip_model: nn.Module) -> RatlipModels:
    """Build generator, discriminator and head from `cfg` around a loaded (frozen) open_clip model.

    The new modules are put on the CLIP model's device. Random initialisation follows the global
    torch RNG, so the same seed gives the same weights.
    """
    backbone = ClipBackbone(clip_model, cfg.clip.input_mapping)
    generator = Generator(cfg.model, backbone)
    discriminator = Discriminator(cfg.model, backbone)
    head = ConditionHead(cfg.model, backbone)
    device = next(clip_model.parameters()).device
    return RatlipModels(backbone, generator, discriminator, head).to(device)


_PARAMS_NAMES = (
    "format_param_table",
    "load_trainable_state_dict",
    "param_counts",
    "param_table",
    "set_trainable",
    "trainable_parameters",
    "trainable_state_dict",
)


def __getattr__(name: str):
    # The parameter helpers are imported lazily so that `python -m ratlip_cli.models.params` runs
    # without importing that module twice.
    if name in _PARAMS_NAMES:
        from ratlip_cli.models import params

        return getattr(params, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AffineFeed",
    "AffineFusion",
    "AffineRecord",
    "CNNEncoder",
    "ClipBackbone",
    "ConditionHead",
    "ConditionalAffine",
    "ConvShuffle",
    "DBlock",
    "Discriminator",
    "GBlock",
    "Generator",
    "PlainConv",
    "RATBlock",
    "RATRecurrence",
    "RatlipModels",
    "ShuffleAttention",
    "build_models",
    "discriminator_grid",
    "format_param_table",
    "g_channels",
    "g_sizes",
    "load_trainable_state_dict",
    "param_counts",
    "param_table",
    "set_trainable",
    "trainable_parameters",
    "trainable_state_dict",
]
