"""The shared blocks in ratlip_cli.models.common against direct computations of what each claims."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ratlip_cli.models.common.carafe import CARAFE, carafe_reassemble
from ratlip_cli.models.common.channel_attention import (
    ECA,
    ChannelAttentionBlock,
    SqueezeExcite,
    channel_attention,
    eca_kernel_size,
)
from ratlip_cli.models.common.cross_attention import CrossAttentionEncoder
from ratlip_cli.models.common.perceptual import PerceptualLoss, truncate_after

# ---------------------------------------------------------------- CARAFE


def _reassemble_loop(x: torch.Tensor, kernels: torch.Tensor, k_up: int, scale: int) -> torch.Tensor:
    """CARAFE's definition pixel by pixel: out[n,c,i,j] = sum_{dy,dx} K[n,(dy+r)k+(dx+r),i,j] x[n,c,i//s+dy,j//s+dx]."""
    n, c, h, w = x.shape
    r = k_up // 2
    out = torch.zeros(n, c, h * scale, w * scale, dtype=x.dtype)
    for b in range(n):
        for i in range(h * scale):
            for j in range(w * scale):
                si, sj = i // scale, j // scale
                for dy in range(-r, r + 1):
                    for dx in range(-r, r + 1):
                        y, xx = si + dy, sj + dx
                        if 0 <= y < h and 0 <= xx < w:
                            out[b, :, i, j] += kernels[b, (dy + r) * k_up + (dx + r), i, j] * x[b, :, y, xx]
    return out


@pytest.mark.parametrize("k_up,scale", [(3, 2), (5, 2), (3, 3), (1, 2)])
def test_carafe_reassemble_matches_pixel_loop(k_up, scale):
    g = torch.Generator().manual_seed(k_up * 10 + scale)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    kernels = torch.randn(2, k_up * k_up, 4 * scale, 5 * scale, generator=g, dtype=torch.float64)
    got = carafe_reassemble(x, kernels, k_up, scale)
    assert got.shape == (2, 3, 4 * scale, 5 * scale)
    torch.testing.assert_close(got, _reassemble_loop(x, kernels, k_up, scale))


def test_carafe_kernel_prediction_is_compress_encode_shuffle_softmax():
    torch.manual_seed(0)
    k_up, k_enc, s = 3, 3, 2
    m = CARAFE(4, scale=s, k_up=k_up, k_enc=k_enc, compressed=6).double()
    nn.init.normal_(m.encoder.weight, std=0.5)  # away from the near-uniform init, so the test can fail
    x = torch.randn(1, 4, 3, 4, dtype=torch.float64)
    enc = F.conv2d(F.conv2d(x, m.compressor.weight, m.compressor.bias), m.encoder.weight, m.encoder.bias, padding=1)
    kernels = m.kernels(x)
    assert kernels.shape == (1, k_up * k_up, 6, 8)
    for i in range(6):
        for j in range(8):
            # pixel shuffle: channel k * s^2 + (i % s) * s + (j % s) at source (i // s, j // s)
            logits = torch.stack([enc[0, k * s * s + (i % s) * s + (j % s), i // s, j // s] for k in range(k_up * k_up)])
            torch.testing.assert_close(kernels[0, :, i, j], torch.softmax(logits, 0))
    torch.testing.assert_close(kernels.sum(1), torch.ones(1, 6, 8, dtype=torch.float64))
    torch.testing.assert_close(m(x), _reassemble_loop(x, kernels, k_up, s))


def test_carafe_module_shapes_args_and_gradients():
    m = CARAFE(8, scale=2, k_up=5, k_enc=3, compressed=16)
    assert m.compressor.out_channels == 16
    assert m.encoder.kernel_size == (3, 3) and m.encoder.out_channels == 4 * 25
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    y = m(x)
    assert y.shape == (2, 8, 8, 8)
    y.square().sum().backward()
    assert x.grad.abs().sum() > 0 and m.encoder.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="odd"):
        CARAFE(8, k_up=4)


def test_carafe_fresh_init_is_near_box_filter_and_constant_preserving():
    # N(0, 0.001) encoder weights give near-uniform kernels: interior pixels of a constant map stay constant.
    m = CARAFE(3, scale=2, k_up=3, k_enc=3, compressed=4)
    y = m(torch.full((1, 3, 6, 6), 2.0))
    torch.testing.assert_close(y[..., 2:-2, 2:-2], torch.full_like(y[..., 2:-2, 2:-2], 2.0), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- channel attention


@pytest.mark.parametrize("channels,k", [(16, 3), (64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)])
def test_eca_kernel_size_formula(channels, k):
    assert eca_kernel_size(channels) == k


def test_eca_matches_direct_formula():
    torch.manual_seed(1)
    m = ECA(8, k_size=3).double()
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    w = m.conv.weight.view(3)
    y = x.mean((2, 3))
    expected = torch.empty_like(x)
    for b in range(2):
        for c in range(8):
            # 1-D correlation across neighbouring channels, zero padded at both ends
            z = sum(w[j] * y[b, c + j - 1] for j in range(3) if 0 <= c + j - 1 < 8)
            expected[b, c] = x[b, c] * torch.sigmoid(z)
    torch.testing.assert_close(m(x), expected)
    assert m.conv.bias is None


def test_se_matches_direct_formula():
    torch.manual_seed(2)
    m = SqueezeExcite(32, reduction=8).double()
    assert m.fc1.weight.shape == (4, 32) and m.fc2.weight.shape == (32, 4)
    x = torch.randn(2, 32, 3, 3, dtype=torch.float64)
    z = x.mean((2, 3))
    s = torch.sigmoid(torch.relu(z @ m.fc1.weight.T) @ m.fc2.weight.T)
    torch.testing.assert_close(m(x), x * s[:, :, None, None])


def test_channel_attention_conv_kinds():
    torch.manual_seed(3)
    assert isinstance(channel_attention("eca", 16), ECA)
    assert isinstance(channel_attention("se", 16), SqueezeExcite)
    assert isinstance(channel_attention("none", 16), nn.Identity)
    with pytest.raises(ValueError, match="eca, se, none"):
        channel_attention("cbam", 16)
    block = ChannelAttentionBlock(4, 16, attention="eca")
    x = torch.randn(2, 4, 5, 5)
    conv = F.conv2d(x, block.conv.weight, padding=1)
    torch.testing.assert_close(block(x), block.attention(conv))
    assert block(x).shape == (2, 16, 5, 5)
    # The attention only rescales each channel by a factor in (0, 1).
    ratio = block(x) / conv
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-5)
    assert ((ratio > 0) & (ratio < 1)).all()


# ---------------------------------------------------------------- perceptual loss


def test_perceptual_loss_is_mean_squared_feature_distance_per_chw():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Conv2d(5, 7, 3))
    loss = PerceptualLoss(net, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4), label="toy")
    fake = torch.rand(3, 3, 8, 8) * 2 - 1
    real = torch.rand(3, 3, 8, 8) * 2 - 1
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    pf = net(((fake + 1) / 2 - mean) / std)
    pr = net(((real + 1) / 2 - mean) / std)
    c, h, w = pf.shape[1:]
    expected = sum(((pf[i] - pr[i]) ** 2).sum() / (c * h * w) for i in range(3)) / 3
    torch.testing.assert_close(loss(fake, real), expected)
    assert loss(real, real).item() == 0.0


def test_perceptual_loss_network_is_frozen_and_grads_reach_fake_only():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    loss = PerceptualLoss(net)
    loss.train()
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    fake = torch.zeros(2, 3, 6, 6, requires_grad=True)
    real = torch.rand(2, 3, 6, 6, requires_grad=True)
    loss(fake, real).backward()
    assert fake.grad.abs().sum() > 0 and real.grad is None
    assert net[1].running_mean.abs().sum() == 0  # eval mode: BatchNorm statistics untouched


def test_perceptual_loss_upsamples_below_min_size_only():
    seen = []
    net = nn.Sequential(nn.Identity())
    net.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    loss = PerceptualLoss(net, min_size=12)
    loss(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    loss(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))
    assert seen == [(1, 3, 12, 12), (1, 3, 12, 12), (1, 3, 16, 16), (1, 3, 16, 16)]


def test_truncate_after_keeps_children_up_to_layer():
    net = nn.Sequential()
    for name in ("a", "b", "c"):
        net.add_module(name, nn.Linear(2, 2))
    cut = truncate_after(net, "b")
    assert len(cut) == 2 and cut[1] is net.b
    with pytest.raises(ValueError, match="a, b, c"):
        truncate_after(net, "z")


# ---------------------------------------------------------------- cross-attention encoder


def _layer_norm(x, ln):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _softmax(x):
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def test_cross_attention_encoder_matches_direct_computation():
    torch.manual_seed(5)
    enc = CrossAttentionEncoder(word_dim=6, query_dim=5, dim=8, dropout=0.3).double().eval()
    for p in enc.parameters():  # non-trivial LayerNorm affine too
        nn.init.normal_(p, std=0.5)
    words = torch.randn(2, 4, 6, dtype=torch.float64)
    image = torch.randn(2, 3, 5, dtype=torch.float64)

    def lin(layer, x):
        return x @ layer.weight.T + layer.bias

    lam = 1 / math.sqrt(8)
    out = enc(words, image)
    for b in range(2):
        a = _softmax(lam * lin(enc.q_v, image[b]) @ lin(enc.k_s, words[b]).T)  # (3 regions, 4 words)
        l_c = _layer_norm(lin(enc.a1, a @ lin(enc.v_s, words[b])), enc.norm1)
        s = _softmax(lam * lin(enc.q_l, l_c) @ lin(enc.k_l, l_c).T)
        f_c = _layer_norm(lin(enc.a2, s @ lin(enc.v_l, l_c)), enc.norm2)
        torch.testing.assert_close(out.cross_weights[b], a)
        torch.testing.assert_close(out.self_weights[b], s)
        torch.testing.assert_close(out.regions[b], f_c)
        torch.testing.assert_close(out.vector[b], f_c.mean(0))


def test_cross_attention_mask_ignores_padding_words():
    torch.manual_seed(6)
    enc = CrossAttentionEncoder(6, 5, 8).eval()
    words = torch.randn(1, 4, 6)
    image = torch.randn(1, 3, 5)
    mask = torch.tensor([[False, False, True, True]])
    out = enc(words, image, mask)
    assert (out.cross_weights[..., 2:] == 0).all()
    other = words.clone()
    other[:, 2:] = torch.randn(1, 2, 6)
    torch.testing.assert_close(enc(other, image, mask).regions, out.regions)
    assert not torch.allclose(enc(other, image).regions, enc(words, image).regions)


def test_cross_attention_dropout_only_in_training():
    torch.manual_seed(7)
    enc = CrossAttentionEncoder(6, 5, 8, dropout=0.5)
    words, image = torch.randn(2, 4, 6), torch.randn(2, 9, 5)
    enc.train()
    assert not torch.allclose(enc(words, image).regions, enc(words, image).regions)
    enc.eval()
    torch.testing.assert_close(enc(words, image).regions, enc(words, image).regions)
    assert enc(words, image).regions.shape == (2, 9, 8)


def test_vgg16_features_from_local_file(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    from ratlip_cli.errors import RatlipError
    from ratlip_cli.models.common.perceptual import VGG16_LAYERS
    from ratlip_cli.weights import load_vgg16_features

    torch.manual_seed(8)
    source = make_layers(cfgs["D"])
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in source.state_dict().items()} | {"classifier.0.bias": torch.zeros(3)}, path)
    loaded = load_vgg16_features(path)
    torch.testing.assert_close(loaded[0].weight, source[0].weight)
    assert not any(p.requires_grad for p in loaded.parameters())
    relu2_2 = truncate_after(loaded, str(VGG16_LAYERS["relu2_2"]))
    assert isinstance(relu2_2[-1], nn.ReLU) and relu2_2(torch.zeros(1, 3, 16, 16)).shape == (1, 128, 8, 8)
    with pytest.raises(RatlipError, match="not found"):
        load_vgg16_features(tmp_path / "none.pth")
    torch.save({"features.0.weight": torch.zeros(2)}, tmp_path / "bad.pth")
    with pytest.raises(RatlipError, match="not a torchvision VGG-16"):
        load_vgg16_features(tmp_path / "bad.pth")
