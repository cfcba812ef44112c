"""The ECAGAN model family (`model.family: ecagan`): DM-GAN with CARAFE upsampling and channel attention
in stage 0 and a perceptual loss at every stage (docs/architecture.md, "ECAGAN family")."""

from ratlip_cli.models.ecagan.family import FAMILY

__all__ = ["FAMILY"]
