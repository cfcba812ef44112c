"""The CAE-GAN model family (`model.family: caegan`): DM-GAN conditioned by a cross-attention encoder
over words and image regions, with a text-only query prior for generation (docs/architecture.md,
"CAE-GAN family")."""

from ratlip_cli.models.caegan.family import FAMILY

__all__ = ["FAMILY"]
