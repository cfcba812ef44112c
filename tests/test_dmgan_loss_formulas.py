"""`dmgan.loss_formulas`: DM-GAN's released code (default) or the papers' formulas, on known logits.

code  (MinfengZhu/DM-GAN code/miscc/losses.py): errD = (real_u + cond_real)/2 + (fake_u + cond_fake + cond_wrong)/3,
      errG_i = BCE(cond) + BCE(uncond); KL_loss = -0.5 mean(1 + logvar - mu^2 - exp(logvar)).
paper (DM-GAN, ECAGAN, CAE-GAN as written; ../shared/seeds/ecagan-caegan-summary.txt):
      L_Di = 1/2 (real_u + fake_u) + 1/2 (cond_real + cond_fake), L_Gi = 1/2 (uncond + cond),
      CAE-GAN's L_CA = KL(N(mu(s)) || N(0, I)) = 0.5 mean(mu^2).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ratlip_cli.config import resolve_config
from ratlip_cli.models.dmgan.losses import discriminator_loss, generator_adv_loss, kl_loss, kl_mean_only


class _FixedD(nn.Module):
    """A discriminator whose logits are fixed per input tensor (keyed by its first value)."""

    def __init__(self, uncond: dict[float, float], cond: dict[float, float]) -> None:
        super().__init__()
        self.u, self.c = uncond, cond
        self.UNCOND_DNET = lambda f: torch.full((f.shape[0],), self.u[float(f[0, 0])])
        self.COND_DNET = lambda f, s: torch.full((f.shape[0],), self.c[(float(f[0, 0]), float(s[0, 0]))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _bce1(logit: float) -> float:  # -log sigmoid(l)
    return math.log1p(math.exp(-logit))


def _bce0(logit: float) -> float:  # -log(1 - sigmoid(l))
    return math.log1p(math.exp(logit))


@pytest.fixture
def setting():
    real, fake = torch.full((3, 2), 1.0), torch.full((3, 2), 2.0)
    s = torch.tensor([[10.0, 0], [20.0, 0], [30.0, 0]])
    uncond = {1.0: 0.7, 2.0: -0.4}
    cond = {(1.0, 10.0): 1.1, (2.0, 10.0): -0.2, (1.0, 20.0): -0.9}  # (image, first sentence)
    return _FixedD(uncond, cond), real, fake, s


def test_code_formulas(setting):
    d, real, fake, s = setting
    dl = discriminator_loss(d, real, fake, s)
    want = (_bce1(0.7) + _bce1(1.1)) / 2 + (_bce0(-0.4) + _bce0(-0.2) + _bce0(-0.9)) / 3
    assert float(dl.total) == pytest.approx(want, rel=1e-6)
    assert float(generator_adv_loss(d, fake, s)) == pytest.approx(_bce1(-0.2) + _bce1(-0.4), rel=1e-6)


def test_paper_formulas(setting):
    d, real, fake, s = setting
    dl = discriminator_loss(d, real, fake, s, "paper")
    want = (_bce1(0.7) + _bce0(-0.4)) / 2 + (_bce1(1.1) + _bce0(-0.2)) / 2
    assert float(dl.total) == pytest.approx(want, rel=1e-6)
    assert float(dl.wrong) == pytest.approx(_bce0(-0.9), rel=1e-6)  # logged, not in the total
    assert float(generator_adv_loss(d, fake, s, "paper")) == pytest.approx((_bce1(-0.2) + _bce1(-0.4)) / 2, rel=1e-6)


def test_ca_losses():
    mu, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.3, -0.2]])
    full = -0.5 * sum(1 + lv - m * m - math.exp(lv) for m, lv in ((0.5, 0.3), (-1.0, -0.2))) / 2
    assert float(kl_loss(mu, logvar)) == pytest.approx(full, rel=1e-6)
    assert float(kl_mean_only(mu)) == pytest.approx(0.5 * (0.25 + 1.0) / 2, rel=1e-6)
    assert float(kl_mean_only(mu)) == pytest.approx(float(kl_loss(mu, torch.zeros_like(mu))), rel=1e-6)


def test_config_key_and_default():
    assert resolve_config("tiny").dmgan.loss_formulas == "code"
    assert resolve_config("tiny", overrides=["dmgan.loss_formulas=paper"]).dmgan.loss_formulas == "paper"
    from ratlip_cli.errors import RatlipError

    with pytest.raises(RatlipError, match="code, paper"):
        resolve_config("tiny", overrides=["dmgan.loss_formulas=seed"])
