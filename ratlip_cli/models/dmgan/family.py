"""The DM-GAN family (`model.family: dmgan`): DM-GAN's networks and step with AttnGAN's DAMSM encoders.

Networks: `networks.py` (generator with dynamic memory, D_NET64/128/256), `damsm.py` (DAMSM text and
image encoders), wrapped for the harness by `adapter.py`; the step is `step.DmganStep`; the text
encoder is the run's copy of `ratlip pretrain-text`'s output (`text.py`). Checkpoint names:
generator, discriminator (the per-stage discriminators), head (empty). See docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ratlip_cli.config import Config
from ratlip_cli.models.family import Family, Networks, RunFiles, TextEncoder, TrainingStep

# train.* keys only the ratlip/galip step reads (announced when a dmgan step is built).
RATLIP_ONLY_KEYS = ("train.lr_g", "train.lr_d", "train.betas", "train.ma_gp_weight", "train.ma_gp_power",
                    "train.clip_sim_weight", "train.channels_last", "train.compile", "train.fp16_recipe")


def dmgan_generator(cfg: Config, nef: int, base_size: int) -> nn.Module:
    """DM-GAN's generator of `cfg` (the `dmgan` section) for text features of width `nef`."""
    from ratlip_cli.models.dmgan.networks import DmganGenerator

    dm = cfg.dmgan
    return DmganGenerator(ngf=dm.gf_dim, nef=nef, ncf=dm.condition_dim, z_dim=dm.z_dim, branch_num=dm.branch_num,
                          base_size=base_size, r_num=dm.r_num, mask_layout=dm.memory_mask)


def build_dmgan(cfg: Config, nef: int, words_num: int, make_generator=dmgan_generator
                ) -> tuple[nn.Module, nn.ModuleList]:
    """The wrapped generator and the per-stage discriminators (DM-GAN's initialisation, global RNG).

    ``make_generator(cfg, nef, base_size)`` builds the inner generator (families built on DM-GAN
    pass their own); a generator with ``reset_after_init()`` gets it called after DM-GAN's init.
    """
    from ratlip_cli.models.dmgan.adapter import DmganImageGenerator
    from ratlip_cli.models.dmgan.networks import DmganDiscriminator, init_weights
    from ratlip_cli.models.dmgan.sizes import stage_sizes

    dm = cfg.dmgan
    sizes = stage_sizes(cfg.data.crop_size, dm.branch_num)
    g = make_generator(cfg, nef, sizes[0])
    ds = nn.ModuleList(DmganDiscriminator(k, ndf=dm.df_dim, nef=nef, base_size=sizes[0]) for k in range(dm.branch_num))
    g.apply(init_weights)
    ds.apply(init_weights)
    if hasattr(g, "reset_after_init"):
        g.reset_after_init()
    return DmganImageGenerator(g, nef, words_num), ds


# DM-GAN's released recipes (MinfengZhu/DM-GAN code/cfg/bird_DMGAN.yml and coco_DMGAN.yml; TEXT.WORDS_NUM
# 18 is code/miscc/config.py's default, which bird_DMGAN.yml keeps). One words_num serves the DAMSM
# pretraining and the GAN (AttnGAN's code/cfg/DAMSM/coco.yml pretrains COCO's text encoder at 15 words).
DMGAN_RECIPES: dict[str, tuple[dict[str, Any], str]] = {
    "cub": ({"train.batch_size": 10, "train.epochs": 800, "dmgan.damsm_weight": 5.0, "dmgan.r_num": 2,
             "damsm.words_num": 18}, "DM-GAN's bird recipe (code/cfg/bird_DMGAN.yml)"),
    "coco": ({"train.batch_size": 16, "train.epochs": 200, "dmgan.damsm_weight": 50.0, "dmgan.r_num": 3,
              "damsm.words_num": 12}, "DM-GAN's COCO recipe (code/cfg/coco_DMGAN.yml)"),
}
# Datasets whose preset carries its own (CPU-sized) dmgan section: no published recipe applies.
OWN_SECTION = ("shapes", "tiny")


def dmgan_recipe(data_name: str) -> tuple[dict[str, Any], str]:
    """DM-GAN's recipe for a dataset and where it comes from; one process, one batch per step."""
    if data_name in OWN_SECTION:
        return {}, ""
    one_batch = {"train.global_batch": 0, "train.accumulate": 1}  # DM-GAN trains one process, one batch
    if data_name in DMGAN_RECIPES:
        settings, source = DMGAN_RECIPES[data_name]
        return {**settings, **one_batch}, source
    return ({**DMGAN_RECIPES["cub"][0], **one_batch},
            "DM-GAN publishes recipes for CUB and COCO only; using its bird recipe (code/cfg/bird_DMGAN.yml)")


class DmganFamily(Family):
    """DM-GAN (Zhu et al., CVPR 2019) with AttnGAN's DAMSM text encoder."""

    name = "dmgan"
    summary = "DM-GAN: 3-stage generator with dynamic memory, DAMSM text encoder (Zhu et al., CVPR 2019)"
    has_rat = False

    def recipe(self, cfg: Config) -> tuple[dict[str, Any], str]:
        """DM-GAN's published recipe for `data.name` (`dmgan_recipe`)."""
        return dmgan_recipe(cfg.data.name)

    def text_encoder(self, cfg: Config, files: RunFiles, device: torch.device | str = "cpu") -> TextEncoder:
        from ratlip_cli.models.dmgan.text import run_damsm_text

        return run_damsm_text(cfg, files, device)

    def pin_paths(self, cfg: Config) -> None:
        """The DAMSM encoders default to `ratlip pretrain-text`'s folder under train.runs_dir: pin it."""
        from ratlip_cli.models.dmgan.text import encoder_source

        cfg.dmgan.text_encoder = str(encoder_source(cfg))

    def make_generator(self, cfg: Config, nef: int, base_size: int) -> nn.Module:
        """The inner generator (a family built on DM-GAN overrides this, and `make_step`)."""
        return dmgan_generator(cfg, nef, base_size)

    def make_step(self, cfg: Config, nets: Networks, device: torch.device, noise: torch.Generator) -> TrainingStep:
        from ratlip_cli.models.dmgan.step import DmganStep

        return DmganStep(cfg, nets, device, noise)

    def build(self, cfg: Config, text: TextEncoder) -> Networks:
        gen, ds = build_dmgan(cfg, text.dim, text.context_length, self.make_generator)
        trainable = {"generator": gen, "discriminator": ds, "head": nn.Module()}
        nets = Networks(text, gen, trainable, gen.z_dim)
        return nets.to(text.device)

    def training_step(self, cfg: Config, nets: Networks, device: torch.device, noise: torch.Generator) -> TrainingStep:
        from ratlip_cli import dist
        from ratlip_cli.console import console

        if dist.is_main():
            console.print(f"model family {self.name}: optimisers and loss weights come from dmgan.*; "
                          f"{', '.join(RATLIP_ONLY_KEYS)} apply to the ratlip and galip families only",
                          highlight=False, soft_wrap=True)
        return self.make_step(cfg, nets, device, noise)

    def build_generator(self, cfg: Config, text: TextEncoder) -> nn.Module:
        return build_dmgan(cfg, text.dim, text.context_length, self.make_generator)[0]

    def export_source(self, source: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        from ratlip_cli.models.dmgan.text import export_damsm_source

        return export_damsm_source(source, out_dir)

    def export_text_encoder(self, source: dict[str, Any], cfg: Config, folder: Path) -> TextEncoder:
        from ratlip_cli.models.dmgan.text import export_damsm_text

        return export_damsm_text(source, cfg, folder)

    def pretrain_text(self, cfg: Config, restart: bool = False) -> Any:
        from ratlip_cli.models.dmgan.pretrain import pretrain_text

        return pretrain_text(cfg, restart=restart)


FAMILY = DmganFamily()
