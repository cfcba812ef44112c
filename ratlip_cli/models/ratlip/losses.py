"""The GALIP/RATLIP objective: hinge losses with a mismatched-caption term, MA-GP, CLIP similarity.

Pure functions of logits, tensors and weights: no models, devices or optimisers in here, so each
term can be checked by hand (`tests/test_losses.py`).

- D: ``relu(1 - D(x, s)) + (relu(1 + D(G(z, s), s)) + relu(1 + D(x, s_mis))) / 2 + MA-GP``,
  with ``s_mis`` the batch's sentences shifted by one (``s_mis[i] = s[i + 1]``).
- MA-GP: ``weight * mean(||[dD/dx, dD/ds]||_2 ** power)`` at real (x, s) (GALIP: 2.0 and 6).
- G: ``-D(G(z, s), s) - clip_sim_weight * cos(CLIP_image(G(z, s)), s)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def mismatched(s: torch.Tensor) -> torch.Tensor:
    """The batch's sentence embeddings shifted by one (sample i gets sentence i + 1), detached."""
    return torch.roll(s.detach(), shifts=-1, dims=0)


def hinge_real(logits: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 - logits)): real images with their own captions should score >= 1."""
    return F.relu(1.0 - logits.float()).mean()


def hinge_fake(logits: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 + logits)): fakes, and reals with mismatched captions, should score <= -1."""
    return F.relu(1.0 + logits.float()).mean()


@dataclass
class DLoss:
    """The discriminator loss and its parts (all scalar tensors; `total` carries the graph)."""

    total: torch.Tensor
    real: torch.Tensor
    fake: torch.Tensor
    mis: torch.Tensor
    ma_gp: torch.Tensor


def d_hinge_loss(
    real_logits: torch.Tensor,
    fake_logits: torch.Tensor,
    mis_logits: torch.Tensor,
    ma_gp: torch.Tensor | None = None,
) -> DLoss:
    """``real + (fake + mis) / 2 + ma_gp`` (GALIP's discriminator objective)."""
    real = hinge_real(real_logits)
    fake = hinge_fake(fake_logits)
    mis = hinge_fake(mis_logits)
    gp = ma_gp if ma_gp is not None else real.new_zeros(())
    return DLoss(total=real + (fake + mis) / 2.0 + gp, real=real, fake=fake, mis=mis, ma_gp=gp)


def ma_gp(
    logits: torch.Tensor,
    x: torch.Tensor,
    s: torch.Tensor,
    weight: float = 2.0,
    power: float = 6.0,
    scale: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Matching-aware gradient penalty at real inputs (GALIP/DF-GAN MA-GP).

    ``logits`` are D's outputs for the real inputs ``x`` (what `Discriminator.encode` returns for
    real images) with their own sentences ``s``; both must require grad and be in ``logits``' graph.
    Returns ``weight * mean(||[grad_x, grad_s]||_2 ** power)`` as an fp32 scalar with a graph (so
    that it trains D).

    Under fp16 autocast pass the GradScaler's current ``scale``: the gradients are taken of the
    scaled output (so small gradients do not underflow in fp16) and divided by the scale before
    the penalty, which is computed in fp32 outside autocast (the 6th power overflows fp16).
    """
    if weight == 0:
        return logits.new_zeros((), dtype=torch.float32)
    out = logits.float().sum()
    if scale is not None:
        out = out * scale
    grad_x, grad_s = torch.autograd.grad(out, (x, s), create_graph=True)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        grad = torch.cat([grad_x.float().flatten(1), grad_s.float().flatten(1)], dim=1)
        if scale is not None:
            grad = grad / scale
        # ||g||_2 ** p computed as (sum g^2) ** (p / 2): the same value, without sqrt's infinite
        # derivative at g = 0 (which would turn the double backward into NaN).
        return weight * grad.square().sum(dim=1).pow(power / 2.0).mean()


@dataclass
class GLoss:
    """The generator loss and its parts (scalar tensors; `total` carries the graph)."""

    total: torch.Tensor
    adv: torch.Tensor
    clip_sim: torch.Tensor


def g_loss(
    fake_logits: torch.Tensor,
    s: torch.Tensor,
    fake_pooled: torch.Tensor | None = None,
    clip_sim_weight: float = 4.0,
) -> GLoss:
    """``-mean(D(fake, s)) - clip_sim_weight * mean(cos(CLIP_image(fake), s))``.

    ``fake_pooled`` is the pooled CLIP image embedding of the fakes; it is only needed (and only
    computed by the caller) when ``clip_sim_weight`` is not 0. ``clip_sim`` reports the mean cosine
    (0 when the term is off).
    """
    adv = -fake_logits.float().mean()
    if clip_sim_weight == 0 or fake_pooled is None:
        if clip_sim_weight != 0:
            raise ValueError("g_loss needs fake_pooled when clip_sim_weight is not 0")
        return GLoss(total=adv, adv=adv, clip_sim=adv.new_zeros(()))
    sim = F.cosine_similarity(fake_pooled.float(), s.detach().float(), dim=-1).mean()
    return GLoss(total=adv - clip_sim_weight * sim, adv=adv, clip_sim=sim)
