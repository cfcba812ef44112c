"""The RATLIP family: GALIP's CLIP-based generator and discriminator with a recurrent affine bridge.

Networks: `ratlip_cli/models/generator.py`, `discriminator.py`, `rat.py`, `attention.py`,
`clip_backbone.py` (built by `ratlip_cli.models.build_models`); the step is `step.RatlipStep`; the
text encoder is the run's frozen CLIP (`models/common/clip_text.py`). Checkpoint names: generator,
discriminator, head. The export is the EMA generator plus the CLIP it needs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ratlip_cli.config import Config
from ratlip_cli.models.common.clip_text import ClipText, export_clip_source, export_clip_text, run_clip_text
from ratlip_cli.models.family import Family, Networks, RunFiles, TextEncoder, TrainingStep


class RatlipFamily(Family):
    """RATLIP (arXiv 2405.08114): the authors' NetG; `model.rat.hidden=0` is RATLIP without RAT
    (GALIP's generator is `model.family: galip`, same code path, plain convs)."""

    name = "ratlip"
    summary = "RATLIP: GALIP with a recurrent affine transformation (RAT) bridge (arXiv 2405.08114)"

    def text_encoder(self, cfg: Config, files: RunFiles, device: torch.device | str = "cpu") -> TextEncoder:
        return run_clip_text(cfg, files, device)

    def build(self, cfg: Config, text: TextEncoder) -> Networks:
        from ratlip_cli.models import build_models

        assert isinstance(text, ClipText)
        models = build_models(cfg, text.clip_model)
        trainable = {"generator": models.generator, "discriminator": models.discriminator, "head": models.head}
        return Networks(text.around(models.backbone), models.generator, trainable, cfg.model.z_dim)

    def training_step(self, cfg: Config, nets: Networks, device: torch.device, noise: torch.Generator) -> TrainingStep:
        from ratlip_cli import dist
        from ratlip_cli.console import notice
        from ratlip_cli.models.ratlip.step import RatlipStep

        step = RatlipStep(cfg, nets, device, noise)
        if cfg.train.compile != "none" and dist.is_main():
            notice(step.compile_reason)
        return step

    def build_generator(self, cfg: Config, text: TextEncoder) -> nn.Module:
        from ratlip_cli.models.generator import Generator

        return Generator(cfg.model, text.module)

    def export_source(self, source: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        return export_clip_source(source, out_dir)

    def export_text_encoder(self, source: dict[str, Any], cfg: Config, folder: Path) -> TextEncoder:
        return export_clip_text(source, cfg, folder)

    def param_counts(self, nets: Networks) -> dict[str, dict[str, int]]:
        """`models.params.param_counts`: bridge, rat, clip_mapper, generator_blocks, generator, ... total."""
        from types import SimpleNamespace

        from ratlip_cli.models.params import param_counts

        t = nets.trainable
        models = SimpleNamespace(backbone=nets.text.module, generator=t["generator"],
                                 discriminator=t["discriminator"], head=t["head"])
        return param_counts(models)

    def import_release(self, path: Path, preset: str | None, config_file: Path | None,
                       overrides: list[str], name: str | None) -> Path:
        """GALIP's and RATLIP's released `state_dict.pth` as a run (see `models/ratlip/release.py`)."""
        from ratlip_cli.models.ratlip.release import import_release_run

        return import_release_run(path, preset, config_file, overrides, name)

    @torch.no_grad()
    def randomise_generator(self, generator: nn.Module, seed: int, scale: float = 0.01, image_std: float = 0.5) -> None:
        """Move the generator off its initialisation so every layer matters for a precision comparison.

        At initialisation the affine layers are identities and the attention gates constants, which
        would hide their rounding. Every trainable tensor gets N(0, scale^2) noise; the output conv is
        then rescaled so fp32 images have standard deviation `image_std` (full-range images, like a
        trained model's, so a PSNR is not flattered by a grey image).
        """
        from ratlip_cli.models.params import trainable_parameters

        gen = torch.Generator().manual_seed(seed)
        for p in trainable_parameters(generator):
            p.add_(scale * torch.randn(p.shape, generator=gen).to(p.device, p.dtype))
        was_training = generator.training
        generator.eval()
        dev = next(generator.parameters()).device
        z = torch.randn(4, generator.z_dim, generator=gen).to(dev)
        s = torch.randn(4, generator.backbone.embed_dim, generator=gen).to(dev)
        std = generator(z, s).float().std().item()
        last = generator.to_rgb[-1]
        if std > 0 and math.isfinite(std):
            last.weight.mul_(image_std / std)
            last.bias.mul_(image_std / std)
        generator.train(was_training)


FAMILY = RatlipFamily()
