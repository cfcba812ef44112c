"""The ECAGAN model family: DM-GAN with CARAFE upsampling, channel attention and a perceptual loss (docs/architecture.md)."""
