"""CAE-GAN's generator from the config (the `dmgan` section for DM-GAN's sizes, `caegan` for the encoder)."""

from __future__ import annotations

from ratlip_cli.config import Config
from ratlip_cli.models.caegan.networks import CaeganGenerator


def caegan_generator(cfg: Config, nef: int, base_size: int) -> CaeganGenerator:
    """The generator of `cfg` for text (and DAMSM image-region) features of width `nef`."""
    dm, c = cfg.dmgan, cfg.caegan
    return CaeganGenerator(ngf=dm.gf_dim, nef=nef, ncf=dm.condition_dim, z_dim=dm.z_dim, branch_num=dm.branch_num,
                           base_size=base_size, r_num=dm.r_num, mask_layout=dm.memory_mask,
                           cross_attention=c.cross_attention, prior_regions=c.prior_regions, region_dim=nef,
                           dropout=c.dropout)
