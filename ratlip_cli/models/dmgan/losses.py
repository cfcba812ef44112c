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


def discriminator_loss(net_d, real: torch.Tensor, fake: torch.Tensor, sentence: torch.Tensor,
                       formulas: str = "code") -> DLoss:
    """errD = (real + cond_real) / 2 + (fake + cond_fake + cond_wrong) / 3 (DM-GAN's code, with the unconditional logit).

    Mismatched pairs: real images 0..B-2 with sentences 1..B-1 (the reference's shift).
    ``formulas="paper"``: the papers' L_Di = 1/2 (real + fake) + 1/2 (cond_real + cond_fake) (DM-GAN,
    ECAGAN, CAE-GAN as written), no mismatched term; ``wrong`` is still computed and logged.
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
        if formulas == "paper":
            total = (real_u + fake_u) / 2.0 + (cond_real + cond_fake) / 2.0
        else:
            total = (real_u + cond_real) / 2.0 + (fake_u + cond_fake + cond_wrong) / 3.0
        return DLoss(total, real_u + cond_real, fake_u + cond_fake, cond_wrong)
    total = (cond_real + cond_fake) / 2.0 if formulas == "paper" else cond_real + (cond_fake + cond_wrong) / 2.0
    return DLoss(total, cond_real, cond_fake, cond_wrong)


def generator_adv_loss(net_d, fake: torch.Tensor, sentence: torch.Tensor, formulas: str = "code") -> torch.Tensor:
    """One stage's adversarial G loss: BCE(cond, real) + BCE(uncond, real) (DM-GAN's code);
    ``formulas="paper"``: half of it, the papers' L_Gi = -1/2 E[log D(x)] - 1/2 E[log D(x, s)]."""
    f = net_d(fake)
    loss = _bce(net_d.COND_DNET(f, sentence), 1.0)
    if net_d.UNCOND_DNET is not None:
        loss = loss + _bce(net_d.UNCOND_DNET(f), 1.0)
    return loss / 2.0 if formulas == "paper" else loss


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Conditioning augmentation's KL(N(mu, sigma^2) || N(0, 1)), averaged over all elements (reference KL_loss)."""
    return -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())


def kl_mean_only(mu: torch.Tensor) -> torch.Tensor:
    """CAE-GAN's L_CA as written, KL(N(mu(s)) || N(0, I)) with unit variance: 0.5 mean(mu^2) over all elements."""
    return 0.5 * torch.mean(mu.pow(2))
