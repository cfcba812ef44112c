"""DM-GAN's adversarial losses and the conditioning-augmentation KL term (``miscc/losses.py``).

The discriminators return logits; the reference applies a sigmoid inside ``D_GET_LOGITS`` and
``nn.BCELoss`` after it. ``binary_cross_entropy_with_logits`` is the same function of the
logits, numerically stabler and allowed under autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


@dataclass
class DLoss:
    """One discriminator's loss and its parts (reference ``discriminator_loss``)."""

    total: torch.Tensor
    real: torch.Tensor  # (uncond + cond) real terms
    fake: torch.Tensor  # (uncond + cond) fake terms
    wrong: torch.Tensor  # conditional logit of real images with the next sample's sentence


def discriminator_loss(net_d, real: torch.Tensor, fake: torch.Tensor, sentence: torch.Tensor) -> DLoss:
    """errD = (real + cond_real) / 2 + (fake + cond_fake + cond_wrong) / 3 (DM-GAN, with the unconditional logit).

    Mismatched pairs: real images 0..B-2 with sentences 1..B-1 (the reference's shift).
    """
    real_f = net_d(real)
    fake_f = net_d(fake.detach())
    cond_real = _bce(net_d.COND_DNET(real_f, sentence), 1.0)
    cond_fake = _bce(net_d.COND_DNET(fake_f, sentence), 0.0)
    b = real_f.shape[0]
    cond_wrong = _bce(net_d.COND_DNET(real_f[: b - 1], sentence[1:b]), 0.0)
    if net_d.UNCOND_DNET is not None:
        real_u = _bce(net_d.UNCOND_DNET(real_f), 1.0)
        fake_u = _bce(net_d.UNCOND_DNET(fake_f), 0.0)
        total = (real_u + cond_real) / 2.0 + (fake_u + cond_fake + cond_wrong) / 3.0
        return DLoss(total, real_u + cond_real, fake_u + cond_fake, cond_wrong)
    total = cond_real + (cond_fake + cond_wrong) / 2.0
    return DLoss(total, cond_real, cond_fake, cond_wrong)


def generator_adv_loss(net_d, fake: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
    """One stage's adversarial G loss: BCE(cond, real) + BCE(uncond, real)."""
    f = net_d(fake)
    loss = _bce(net_d.COND_DNET(f, sentence), 1.0)
    if net_d.UNCOND_DNET is not None:
        loss = loss + _bce(net_d.UNCOND_DNET(f), 1.0)
    return loss


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Conditioning augmentation's KL(N(mu, sigma^2) || N(0, 1)), averaged over all elements (reference KL_loss)."""
    return -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
