"""The RATLIP family: GALIP's CLIP-based generator and discriminator with a recurrent affine bridge.

Networks (this package): `generator.py`, `discriminator.py`, `rat.py`, `attention.py`, around
`models/common/clip_backbone.py` (built by `build.build_models`); the step is `step.RatlipStep`; the
text encoder is the run's frozen CLIP (`models/common/clip_text.py`). Checkpoint names: generator,
discriminator, head. The export is the EMA generator plus the CLIP it needs.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import torch
from torch import nn

from ratlip_cli.config import Config
from ratlip_cli.models.common.clip_text import ClipText, export_clip_source, export_clip_text, run_clip_text
from ratlip_cli.models.family import Family, Networks, ReleaseRead, RunFiles, TextEncoder, TrainingStep


class RatlipFamily(Family):
    """RATLIP (arXiv 2405.08114): the authors' NetG; `model.rat.hidden=0` is RATLIP without RAT
    (GALIP's generator is `model.family: galip`, same code path, plain convs)."""

    name = "ratlip"
    summary = "RATLIP: GALIP with a recurrent affine transformation (RAT) bridge (arXiv 2405.08114)"
    accumulates = True

    def text_encoder(self, cfg: Config, files: RunFiles, device: torch.device | str = "cpu") -> TextEncoder:
        return run_clip_text(cfg, files, device)

    def build(self, cfg: Config, text: TextEncoder) -> Networks:
        from ratlip_cli.models.ratlip.build import build_models

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
        from ratlip_cli.models.ratlip.generator import Generator

        return Generator(cfg.model, text.module)

    def export_source(self, source: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        return export_clip_source(source, out_dir)

    def export_text_encoder(self, source: dict[str, Any], cfg: Config, folder: Path) -> TextEncoder:
        return export_clip_text(source, cfg, folder)

    def param_counts(self, nets: Networks) -> dict[str, dict[str, int]]:
        """`models.ratlip.params.param_counts`: bridge, rat, clip_mapper, generator_blocks, generator, ... total."""
        from ratlip_cli.models.ratlip.params import param_counts

        t = nets.trainable
        models = SimpleNamespace(backbone=nets.text.module, generator=t["generator"],
                                 discriminator=t["discriminator"], head=t["head"])
        return param_counts(models)

    def param_table(self, cfg: Config, clip_model: nn.Module, hiddens: Sequence[int],
                    with_release: bool = False) -> list[dict[str, Any]]:
        """Table II's parameter column per h (`models/ratlip/params.py`)."""
        from ratlip_cli.models.ratlip.params import param_table

        return param_table(cfg, clip_model, hiddens, with_release=with_release)

    def read_release(self, path: Path) -> ReleaseRead:
        """GALIP's and RATLIP's released `state_dict.pth` (see `models/ratlip/release.py`)."""
        from ratlip_cli.models.ratlip.release import read_release_checkpoint, release_description, release_settings

        checkpoint = read_release_checkpoint(path)
        return ReleaseRead(release_settings(checkpoint), release_description(checkpoint), checkpoint)

    def release_networks(self, cfg: Config, clip_model: nn.Module, release: ReleaseRead) -> tuple[Networks, bool]:
        from ratlip_cli.models.ratlip.release import release_models

        models, clip_matches = release_models(cfg, clip_model, release.checkpoint)
        trainable = {"generator": models.generator, "discriminator": models.discriminator, "head": models.head}
        nets = Networks(SimpleNamespace(module=models.backbone), models.generator, trainable, cfg.model.z_dim)
        return nets, clip_matches

    @torch.no_grad()
    def randomise_generator(self, generator: nn.Module, seed: int, scale: float = 0.01, image_std: float = 0.5) -> None:
        """Move the generator off its initialisation so every layer matters for a precision comparison.

        At initialisation the affine layers are identities and the attention gates constants, which
        would hide their rounding. Every trainable tensor gets N(0, scale^2) noise; the output conv is
        then rescaled so fp32 images have standard deviation `image_std` (full-range images, like a
        trained model's, so a PSNR is not flattered by a grey image).
        """
        from ratlip_cli.models.trainable import trainable_parameters

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
