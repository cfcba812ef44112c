"""RATLIP and GALIP networks (`model.family`) built from the config and an already-loaded open_clip model (no files, no CLI).

    from ratlip_cli.models.ratlip.build import build_models

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
from ratlip_cli.models.common.clip_backbone import ClipBackbone
from ratlip_cli.models.ratlip.discriminator import ConditionHead, Discriminator
from ratlip_cli.models.ratlip.generator import Generator


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
