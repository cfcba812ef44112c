"""The CAE-GAN model family: DM-GAN conditioned by a cross-attention encoder, with a text-only query prior (docs/architecture.md)."""
