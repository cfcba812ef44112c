"""ratlip: train, sample, evaluate and ablate RATLIP text-to-image GANs."""

__version__ = "0.1.0"
