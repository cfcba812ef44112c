"""ECAGAN and CAE-GAN generators: each switch changes exactly the modules it names, and with every
switch off the generator is DM-GAN's (same state-dict keys, same outputs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ratlip_cli.models.caegan.networks import CaeganGenerator
from ratlip_cli.models.common.carafe import CARAFE
from ratlip_cli.models.common.channel_attention import ECA, SqueezeExcite
from ratlip_cli.models.dmgan.networks import DmganGenerator, init_weights
from ratlip_cli.models.ecagan.networks import CarafeSettings, EcaganGenerator

SMALL = dict(ngf=4, nef=8, ncf=6, z_dim=5, branch_num=3, base_size=16, r_num=1)
T = 5


def _inputs(b: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, 5, generator=g)
    sentence = torch.randn(b, 8, generator=g)
    words = torch.randn(b, 8, T, generator=g)
    mask = torch.zeros(b, T, dtype=torch.bool)
    mask[0, 3:] = True
    eps = torch.randn(b, 6, generator=g)
    return z, sentence, words, mask, eps


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _inputs64(b: int = 3, seed: int = 0):
    return tuple(t.double() if t.is_floating_point() else t for t in _inputs(b, seed))


def _same_outputs(a: nn.Module, b: nn.Module, **kw) -> None:
    """Bit-exact: the same modules, weights and inputs run the same kernels on one machine and thread count."""
    a.eval(), b.eval()
    with torch.no_grad():
        ia, _, mu_a, _ = a(*_inputs(), **kw) if kw else a(*_inputs())
        ib, _, mu_b, _ = b(*_inputs())
    for x, y in zip(ia, ib):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    torch.testing.assert_close(mu_a, mu_b, rtol=0, atol=0)


def test_ecagan_with_both_switches_off_is_dmgan():
    torch.manual_seed(0)
    dm = DmganGenerator(**SMALL)
    dm.apply(init_weights)
    ec = EcaganGenerator(**SMALL, carafe=None, attention="none")
    assert _shapes(ec) == _shapes(dm)
    ec.load_state_dict(dm.state_dict())
    _same_outputs(ec, dm)


@pytest.mark.parametrize("attention,kind", [("eca", ECA), ("se", SqueezeExcite), ("none", None)])
@pytest.mark.parametrize("carafe", [True, False])
def test_ecagan_switches_change_only_stage0_upsampling(carafe, attention, kind):
    dm = DmganGenerator(**SMALL)
    settings = CarafeSettings(k_up=3, k_enc=5, compressed=7) if carafe else None
    ec = EcaganGenerator(**SMALL, carafe=settings, attention=attention)
    dm_keys, ec_keys = _shapes(dm), _shapes(ec)
    changed = {k for k in set(dm_keys) | set(ec_keys) if dm_keys.get(k) != ec_keys.get(k)}
    assert all(k.startswith("h_net1.upsample") for k in changed)
    steps = ec.h_net1.steps
    assert steps == 2  # base 16: 4 -> 8 -> 16
    for k in range(1, steps + 1):
        block = getattr(ec.h_net1, f"upsample{k}")
        if carafe:
            assert isinstance(block[0], CARAFE)
            assert block[0].k_up == 3 and block[0].encoder.kernel_size == (5, 5)
            assert block[0].compressor.out_channels == 7
        else:
            assert isinstance(block[0], nn.Upsample)
        if kind is None:
            assert len(block) == 4
        else:
            assert isinstance(block[-1], kind) and len(block) == 5
    assert bool(changed) == (carafe or attention != "none")


def test_ecagan_stage_shapes_and_batch_independence():
    torch.manual_seed(1)
    ec = EcaganGenerator(**SMALL, carafe=CarafeSettings(k_up=3, k_enc=3, compressed=4), attention="eca")
    ec.apply(init_weights)
    ec.reset_after_init()
    assert all(m.encoder.weight.std() < 0.01 for m in ec.modules() if isinstance(m, CARAFE))
    ec.double().eval()
    z, s, w, m, eps = _inputs64(3)
    with torch.no_grad():
        images, maps, mu, logvar = ec(z, s, w, m, eps)
        assert [tuple(i.shape) for i in images] == [(3, 3, 16, 16), (3, 3, 32, 32), (3, 3, 64, 64)]
        assert [tuple(a.shape) for a in maps] == [(3, T, 16, 16), (3, T, 32, 32)]
        one, _, _, _ = ec(z[1:2], s[1:2], w[1:2], m[1:2], eps[1:2])
    # float64: a batch of 1 and of 3 may run different kernels, which changes only the last bits (~1e-16).
    for full, single in zip(images, one):
        torch.testing.assert_close(full[1:2], single, rtol=0, atol=1e-12)


def test_caegan_without_cross_attention_is_dmgan():
    torch.manual_seed(2)
    dm = DmganGenerator(**SMALL)
    dm.apply(init_weights)
    ce = CaeganGenerator(**SMALL, cross_attention=False)
    assert _shapes(ce) == _shapes(dm)
    ce.load_state_dict(dm.state_dict())
    _same_outputs(ce, dm)


def test_caegan_cross_attention_adds_only_encoder_and_prior():
    dm, ce = DmganGenerator(**SMALL), CaeganGenerator(**SMALL, prior_regions=4, region_dim=3)
    extra = set(_shapes(ce)) - set(_shapes(dm))
    assert {k.split(".")[0] for k in extra} == {"encoder", "query_prior"}
    assert {k: v for k, v in _shapes(ce).items() if k not in extra} == _shapes(dm)
    assert ce.query_prior.position.shape == (4, 3) and ce.encoder.q_v.in_features == 3


def test_caegan_condition_reads_image_regions_or_the_prior():
    torch.manual_seed(3)
    ce = CaeganGenerator(**SMALL, prior_regions=4, region_dim=3).double().eval()
    z, s, w, m, eps = _inputs64(3)
    regions = torch.randn(3, 4, 3, dtype=torch.float64)
    with torch.no_grad():
        direct = ce.encoder(w.transpose(1, 2), regions, m).vector
        torch.testing.assert_close(ce.condition(s, w, m, regions), direct)
        text_only = ce.encoder(w.transpose(1, 2), ce.query_prior(s), m).vector
        torch.testing.assert_close(ce.condition(s, w, m), text_only)
        # the generator's CA reads f_c, not the sentence
        _, mu, _ = ce.ca_net(direct, eps)
        _, _, mu_g, _ = ce(z, s, w, m, eps, image_regions=regions)
        torch.testing.assert_close(mu_g, mu)
        images, _, _, _ = ce(z, s, w, m, eps)  # text only
        one, _, _, _ = ce(z[2:], s[2:], w[2:], m[2:], eps[2:])
    assert [tuple(i.shape) for i in images] == [(3, 3, 16, 16), (3, 3, 32, 32), (3, 3, 64, 64)]
    for full, single in zip(images, one):  # float64, as in test_ecagan_stage_shapes_and_batch_independence
        torch.testing.assert_close(full[2:], single, rtol=0, atol=1e-12)


def test_caegan_prior_loss_trains_the_prior_only_towards_the_real_regions_f_c():
    torch.manual_seed(4)
    ce = CaeganGenerator(**SMALL, prior_regions=2, region_dim=3, dropout=0.0)
    z, s, w, m, eps = _inputs(4)
    regions = torch.randn(4, 7, 3)  # the real image has 7 regions, the prior makes 2
    with torch.no_grad():
        target = ce.encoder(w.transpose(1, 2), regions, m).vector
        predicted = ce.encoder(w.transpose(1, 2), ce.query_prior(s), m).vector
    loss = ce.prior_loss(s, w, m, regions)
    torch.testing.assert_close(loss, ((predicted - target) ** 2).mean())
    loss.backward()
    assert all(p.grad is None for p in ce.encoder.parameters())
    assert all(p.grad is None for n, p in ce.named_parameters() if not n.startswith(("encoder", "query_prior")))
    assert ce.query_prior.proj.weight.grad.abs().sum() > 0
    opt = torch.optim.Adam(ce.query_prior.parameters(), lr=0.02)
    first = loss.item()
    for _ in range(150):
        opt.zero_grad()
        ce.prior_loss(s, w, m, regions).backward()
        opt.step()
    assert ce.prior_loss(s, w, m, regions).item() < 0.1 * first
