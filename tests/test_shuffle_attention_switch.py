"""`model.shuffle_attention`: false removes the shuffle attention layers of Conv_shuffle and nothing else."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ratlip_cli.config import resolve_config
from ratlip_cli.models.ratlip.build import build_models
from ratlip_cli.models.ratlip.params import param_counts, param_table
from ratlip_cli.models.trainable import trainable_parameters
from ratlip_cli.models.ratlip.attention import ShuffleAttention
from ratlip_cli.models.ratlip.generator import ConvShuffle


def _build(clip, *overrides: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_models(resolve_config("tiny", overrides=["model.rat.hidden=8", *overrides]), clip)


@torch.no_grad()
def _perturb(module: nn.Module, seed: int = 3) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in trainable_parameters(module):
        p.add_(0.1 * torch.randn(p.shape, generator=gen))


class _NoAttention(nn.Module):
    """What a Conv_shuffle without SA computes after its LeakyReLU: the activation (plus the residual)."""

    def forward(self, x, residual=None):
        return x if residual is None else residual + x


def test_default_is_the_authors_network(tiny_clip):
    cfg = resolve_config("tiny")
    assert cfg.model.shuffle_attention is True
    g = _build(tiny_clip[0]).generator
    convs = [m for m in g.modules() if isinstance(m, ConvShuffle)]
    assert convs and all(isinstance(m.attn, ShuffleAttention) for m in convs)


def test_switch_removes_exactly_the_sa_parameters(tiny_clip):
    on = _build(tiny_clip[0])
    off = _build(tiny_clip[0], "model.shuffle_attention=false")
    sa_modules = [m for m in on.generator.modules() if isinstance(m, ShuffleAttention)]
    sa = sum(p.numel() for m in sa_modules for p in m.parameters())
    assert sa > 0 and not any(isinstance(m, ShuffleAttention) for m in off.generator.modules())
    c_on, c_off = param_counts(on), param_counts(off)
    assert c_on["shuffle_attention"]["trainable"] == sa
    assert c_off["shuffle_attention"]["trainable"] == 0
    assert c_on["generator"]["trainable"] - c_off["generator"]["trainable"] == sa
    for part in ("discriminator", "head", "rat"):  # nothing else changes
        assert c_on[part] == c_off[part]
    keys_on = set(on.generator.state_dict())
    keys_off = set(off.generator.state_dict())
    assert keys_off < keys_on
    assert all(".attn." in k for k in keys_on - keys_off)
    rows = param_table(resolve_config("tiny", overrides=["model.shuffle_attention=false"]), tiny_clip[0], [0, 8])
    rows_on = param_table(resolve_config("tiny"), tiny_clip[0], [0, 8])
    for r_off, r_on in zip(rows, rows_on):
        assert r_off["shuffle_attention"] == 0
        assert r_on["generator"] - r_off["generator"] == r_on["shuffle_attention"] > 0


@pytest.mark.parametrize("train_mode", [False, True])
def test_output_without_sa_equals_a_network_built_without_sa_layers(tiny_clip, train_mode):
    """SA off = the SA-on network with every SA layer replaced by the identity, same other weights."""
    off = _build(tiny_clip[0], "model.shuffle_attention=false").generator
    _perturb(off)
    ref = _build(tiny_clip[0], seed=1).generator
    for m in ref.modules():
        if isinstance(m, ConvShuffle):
            m.attn = _NoAttention()
    missing, unexpected = ref.load_state_dict(off.state_dict(), strict=False)
    assert not missing and not unexpected
    off.train(train_mode)
    ref.train(train_mode)
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(3, off.z_dim, generator=gen)
    s = torch.randn(3, off.cond_dim - off.z_dim, generator=gen)
    with torch.no_grad():
        a, b = off(z, s), ref(z, s)
        on_out = _build(tiny_clip[0]).generator.train(train_mode)(z, s)
    assert a.shape == on_out.shape
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, on_out, atol=1e-3)  # and it is a different network from SA on


def test_conv_shuffle_without_sa_is_conv_bn_leaky_relu():
    torch.manual_seed(0)
    block = ConvShuffle(4, 8, 2, shuffle_attention=False).eval()
    with torch.no_grad():
        block.bn.running_mean.uniform_(-0.5, 0.5)
        block.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 4, 6, 6)
    r = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        want = torch.nn.functional.leaky_relu(block.bn(block.conv(x)), 0.01)
        assert torch.allclose(block(x), want, atol=1e-5)
        assert torch.allclose(block(x, residual=r), r + want, atol=1e-5)
