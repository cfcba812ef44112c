"""The GALIP/RATLIP objective, term by term, against hand computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ratlip_cli.models.ratlip.losses import d_hinge_loss, g_loss, hinge_fake, hinge_real, ma_gp, mismatched


def test_hinge_values_on_known_logits():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - l) = 0, 0.5, 2
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + l) = 0, 1, 2
    mis = torch.tensor([-0.5, -3.0, 0.5])  # relu(1 + l) = 0.5, 0, 1.5
    assert hinge_real(real).item() == pytest.approx(2.5 / 3)
    assert hinge_fake(fake).item() == pytest.approx(1.0)
    gp = torch.tensor(0.25)
    out = d_hinge_loss(real, fake, mis, gp)
    assert out.real.item() == pytest.approx(2.5 / 3)
    assert out.fake.item() == pytest.approx(1.0)
    assert out.mis.item() == pytest.approx(2.0 / 3)
    assert out.total.item() == pytest.approx(2.5 / 3 + (1.0 + 2.0 / 3) / 2 + 0.25)


def test_hinge_is_zero_beyond_the_margin():
    assert hinge_real(torch.tensor([1.0, 5.0])).item() == 0.0
    assert hinge_fake(torch.tensor([-1.0, -5.0])).item() == 0.0


def test_mismatch_shifts_sentences_by_one():
    s = torch.arange(12.0).view(4, 3).requires_grad_(True)
    m = mismatched(s)
    assert torch.equal(m[0], s[1].detach()) and torch.equal(m[2], s[3].detach())
    assert torch.equal(m[3], s[0].detach())  # wraps around
    assert not m.requires_grad
    for i in range(4):  # nobody keeps their own sentence
        assert not torch.equal(m[i], s[i].detach())


def _linear_d(w: torch.Tensor, v: torch.Tensor):
    """D(x, s) = <x, w> + <s, v> per sample (so dD/dx = w and dD/ds = v for every sample)."""
    return lambda x, s: x.flatten(1) @ w + s @ v


def test_ma_gp_equals_hand_computation_on_a_linear_d():
    torch.manual_seed(0)
    w = torch.randn(2 * 3 * 3, requires_grad=True)
    v = torch.randn(5, requires_grad=True)
    x = torch.randn(4, 2, 3, 3, requires_grad=True)
    s = torch.randn(4, 5, requires_grad=True)
    logits = _linear_d(w, v)(x, s)
    got = ma_gp(logits, x, s, weight=2.0, power=6.0)
    norm = torch.sqrt((w.detach() ** 2).sum() + (v.detach() ** 2).sum())
    assert got.item() == pytest.approx(2.0 * norm.item() ** 6, rel=1e-5)
    # It trains D: the penalty has a gradient w.r.t. D's weights (d/dw 2 * (|w|^2 + |v|^2)^3 = 12 |.|^4 w).
    got.backward()
    expected = 12.0 * norm.item() ** 4 * w.detach()
    assert torch.allclose(w.grad, expected, rtol=1e-4)


def test_ma_gp_per_sample_norms_are_averaged():
    # D = sum(x^2) + <s, v>: dD/dx = 2x differs per sample.
    torch.manual_seed(1)
    v = torch.randn(3)
    x = torch.randn(5, 4, requires_grad=True)
    s = torch.randn(5, 3, requires_grad=True)
    logits = (x**2).sum(1) + s @ v
    got = ma_gp(logits, x, s, weight=1.5, power=2.0)
    per_sample = ((2 * x.detach()) ** 2).sum(1) + (v**2).sum()
    assert got.item() == pytest.approx(1.5 * per_sample.mean().item(), rel=1e-5)


def test_ma_gp_is_unchanged_by_grad_scaling():
    """With a GradScaler scale the gradients are taken of scaled logits and divided back."""
    torch.manual_seed(2)
    w, v = torch.randn(6), torch.randn(3)
    x = torch.randn(4, 6, requires_grad=True)
    s = torch.randn(4, 3, requires_grad=True)
    plain = ma_gp(_linear_d(w, v)(x, s), x, s)
    scaled = ma_gp(_linear_d(w, v)(x, s), x, s, scale=65536.0)
    assert scaled.dtype == torch.float32
    assert scaled.item() == pytest.approx(plain.item(), rel=1e-5)


def test_ma_gp_under_bf16_autocast_is_fp32_and_finite():
    torch.manual_seed(3)
    lin = torch.nn.Linear(8, 1)
    x = torch.randn(4, 8, requires_grad=True)
    s = torch.randn(4, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(x * s).squeeze(1)
        gp = ma_gp(logits, x, s, weight=2.0, power=6.0)
    assert gp.dtype == torch.float32 and torch.isfinite(gp)


def test_ma_gp_has_no_nan_gradient_at_zero_input_gradient():
    # D ignores its inputs: ||grad|| = 0, and the penalty's own gradient must be 0, not NaN.
    w = torch.zeros(3, requires_grad=True)
    x = torch.randn(2, 3, requires_grad=True)
    s = torch.randn(2, 3, requires_grad=True)
    gp = ma_gp(x @ w + (s * 0).sum(1), x, s)
    gp.backward()
    assert gp.item() == 0.0 and torch.isfinite(w.grad).all()


def test_g_loss_with_and_without_clip_term():
    logits = torch.tensor([1.0, 2.0])
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pooled = torch.tensor([[1.0, 1.0], [0.0, 2.0]])  # cos = 1/sqrt(2), 1
    cos = F.cosine_similarity(pooled, s, dim=-1).mean().item()
    out = g_loss(logits, s, pooled, clip_sim_weight=4.0)
    assert out.adv.item() == pytest.approx(-1.5)
    assert out.clip_sim.item() == pytest.approx(cos)
    assert out.total.item() == pytest.approx(-1.5 - 4.0 * cos)
    off = g_loss(logits, s, None, clip_sim_weight=0.0)
    assert off.total.item() == pytest.approx(-1.5) and off.clip_sim.item() == 0.0
    with pytest.raises(ValueError):
        g_loss(logits, s, None, clip_sim_weight=4.0)
