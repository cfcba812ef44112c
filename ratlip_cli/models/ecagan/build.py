"""ECAGAN's generator from the config (the `dmgan` section for DM-GAN's sizes, `ecagan` for the changes)."""

from __future__ import annotations

from ratlip_cli.config import Config
from ratlip_cli.models.ecagan.networks import CarafeSettings, EcaganGenerator


def ecagan_generator(cfg: Config, nef: int, base_size: int) -> EcaganGenerator:
    """The generator of `cfg` for text features of width `nef` and a first stage of `base_size` px.

    DM-GAN's initialisation is applied by the caller (`init_weights`), then `reset_after_init()`.
    """
    dm, e = cfg.dmgan, cfg.ecagan
    carafe = CarafeSettings(e.k_up, e.k_enc, e.carafe_channels) if e.carafe else None
    return EcaganGenerator(ngf=dm.gf_dim, nef=nef, ncf=dm.condition_dim, z_dim=dm.z_dim, branch_num=dm.branch_num,
                           base_size=base_size, r_num=dm.r_num, mask_layout=dm.memory_mask, carafe=carafe,
                           attention=e.channel_attention, head_attention=e.head_attention)
