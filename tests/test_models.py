"""The networks on the tiny random CLIP: shapes, batch independence, RAT recurrence, gradients, seeds."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ratlip_cli.config import resolve_config
from ratlip_cli.errors import RatlipError
from ratlip_cli.models.common.clip_backbone import OPENAI_MEAN, OPENAI_STD, ClipBackbone
from ratlip_cli.models.ratlip.build import build_models
from ratlip_cli.models.ratlip.generator import g_channels, g_sizes
from ratlip_cli.models.ratlip.params import format_param_table, param_counts, param_table
from ratlip_cli.models.trainable import load_trainable_state_dict, set_trainable, trainable_parameters, trainable_state_dict
from tolerance import rounding_tolerance

HIDDENS = (0, 4, 8, 16, 32, 64, 128)


def _cfg(*overrides: str):
    return resolve_config("tiny", overrides=list(overrides))


def _build(clip, *overrides: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_models(_cfg(*overrides), clip)


@torch.no_grad()
def _perturb(*modules, scale: float = 0.1, seed: int = 123) -> None:
    """Move every trainable weight off its (often identity or zero) initialisation."""
    gen = torch.Generator().manual_seed(seed)
    for module in modules:
        for p in trainable_parameters(module):
            p.add_(scale * torch.randn(p.shape, generator=gen))


def _inputs(models, batch: int, seed: int = 7):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, models.generator.z_dim, generator=gen)
    s = torch.randn(batch, models.backbone.embed_dim, generator=gen)
    return z, s


# ---- backbone ------------------------------------------------------------------------------------


def test_backbone_sizes_text_and_image_paths_match_open_clip(tiny_clip):
    clip, tokenizer = tiny_clip
    bb = ClipBackbone(clip)
    assert (bb.width, bb.depth, bb.grid, bb.image_size, bb.embed_dim, bb.context_length) == (64, 3, 4, 32, 32, 16)

    tokens = tokenizer(["a red circle", "a blue square on grey"])
    sentence, words = bb.encode_text(tokens)
    assert sentence.shape == (2, 32) and words.shape == (2, 16, 32)
    assert torch.allclose(sentence, clip.encode_text(tokens), atol=1e-6)  # the same call: bit-exact (0 measured)

    # One range map, then CLIP normalisation: black (-1) -> (0 - mean) / std, white -> (1 - mean) / std.
    black = bb.to_clip_input(-torch.ones(1, 3, 32, 32))
    assert torch.allclose(black[0, :, 0, 0], (-bb.mean / bb.std).view(3))
    white = bb.to_clip_input(torch.ones(1, 3, 48, 48))  # resized (antialiased) to 32, stays constant
    assert white.shape == (1, 3, 32, 32)
    assert torch.allclose(white[0, :, 5, 7], ((1 - bb.mean) / bb.std).view(3), atol=1e-5)

    images = torch.rand(2, 3, 32, 32) * 2 - 1
    feats, pooled = bb.image_features(images, [0, 2])
    assert [f.shape for f in feats] == [(2, 64, 4, 4)] * 2
    # Our block loop (SDPA while grad is on) and open_clip's forward run different kernels: compared in float64
    # on a copy, with the rounding tolerance (tests/tolerance.py) of two float64 computations 3 blocks x 6
    # products + patch conv + projection deep, widest dot product the 256-wide MLP.
    clip64 = copy.deepcopy(clip).double()
    bb64 = ClipBackbone(clip64)
    feats64, pooled64 = bb64.image_features(images.double(), [0, 2])
    with torch.no_grad():
        ref = clip64.visual.forward_intermediates(bb64.to_clip_input(images.double()), indices=[0, 2])
    for mine, theirs in zip([pooled64, *feats64], [ref["image_features"], *ref["image_intermediates"]]):
        atol = rounding_tolerance(theirs, 3 * 6 + 2, 256, computations=2, dtype=torch.float64)
        torch.testing.assert_close(mine, theirs, rtol=0, atol=atol)
    short, none = bb.image_features(images, [1], with_pooled=False)
    assert none is None and short[0].shape == (2, 64, 4, 4)

    # The mapper without prompts is the ViT run on a given token grid.
    mapped = bb.map_with_prompts(feats[0], feats[0].new_zeros(2, 0, 64), [])
    assert mapped.shape == (2, 64, 4, 4) and torch.isfinite(mapped).all()


def test_backbone_frozen_and_always_eval(tiny_clip):
    models = _build(tiny_clip[0])
    bb = models.backbone
    for module in (models.generator, models.discriminator, models.head):
        module.train()
    assert models.generator.training and models.discriminator.training
    assert not any(m.training for m in bb.modules())
    assert not any(p.requires_grad for p in bb.parameters())
    # The GAN idiom D.requires_grad_(True) must not leave CLIP trainable.
    models.discriminator.requires_grad_(True)
    models.discriminator.encode(torch.zeros(1, 3, 32, 32))
    assert not any(p.requires_grad for p in bb.parameters())
    set_trainable(models.discriminator, False)
    assert not any(p.requires_grad for p in models.discriminator.parameters())
    set_trainable(models.discriminator, True)
    assert all(p.requires_grad for p in trainable_parameters(models.discriminator))
    assert not any(p.requires_grad for p in bb.parameters())


# ---- shapes --------------------------------------------------------------------------------------


def test_generator_layout_follows_galip():
    assert [o // 64 for _, o in g_channels(64, 224)] == [8, 8, 8, 4, 2, 1]
    assert g_channels(64, 224)[0][0] == 8 * 64
    assert g_sizes(6, 224) == [8, 16, 32, 64, 128, 224]
    assert len(g_channels(32, 64)) == 4 and len(g_channels(8, 32)) == 3
    assert g_sizes(3, 32) == [8, 16, 32]


@pytest.mark.parametrize("d_backbone", ["clip", "cnn"])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shapes_and_ranges(tiny_clip, d_backbone, batch):
    models = _build(tiny_clip[0], f"model.d_backbone={d_backbone}")
    z, s = _inputs(models, batch)
    img = models.generator(z, s)
    assert img.shape == (batch, 3, 32, 32) and torch.isfinite(img).all()
    x, pooled = models.discriminator.encode(img)
    if d_backbone == "clip":
        assert x.shape == (batch, 3, 64, 4, 4) and pooled.shape == (batch, 32)
    else:
        assert x is img and pooled is None
    dmap = models.discriminator(x)
    assert dmap.shape == (batch, 32, 4, 4) and torch.isfinite(dmap).all()
    logits = models.head(dmap, s)
    assert logits.shape == (batch,) and torch.isfinite(logits).all()


def test_cnn_discriminator_resizes_and_differentiates_images(tiny_clip):
    models = _build(tiny_clip[0], "model.d_backbone=cnn")
    assert not hasattr(models.discriminator, "backbone")
    images = torch.rand(2, 3, 48, 48) * 2 - 1
    x, pooled = models.discriminator.encode(images)
    assert x.shape == (2, 3, 32, 32) and pooled is None
    x.requires_grad_(True)
    out = models.head(models.discriminator(x), torch.randn(2, 32)).sum()
    (grad,) = torch.autograd.grad(out, x)
    assert grad.shape == x.shape and grad.abs().sum() > 0


# ---- RAT -----------------------------------------------------------------------------------------


def _alone_vs_in_batch(models, target_pos: int) -> float:
    """Max abs diff of one sample's image generated alone vs at `target_pos` in a batch of 5."""
    z, s = _inputs(models, 5)
    others = [3, 0, 4, 1]
    order = torch.tensor(others[:target_pos] + [2] + others[target_pos:])
    with torch.no_grad():
        alone = models.generator(z[2:3], s[2:3])
        batch = models.generator(z[order], s[order])
    return (batch[target_pos] - alone[0]).abs().max().item()


@pytest.mark.parametrize("hidden", HIDDENS)
def test_batch_independence_recurrent(tiny_clip, hidden):
    models = _build(tiny_clip[0], f"model.rat.hidden={hidden}", "model.rat.scope=all")
    _perturb(models.generator, scale=0.03)  # images of magnitude ~1, so 1e-5 is far above fp32 round-off
    models.generator.eval()
    for pos in (0, 2, 4):
        assert _alone_vs_in_batch(models, pos) < 1e-5
    z, s = _inputs(models, 2)
    with torch.no_grad():  # not vacuous: the condition does change the image
        assert (models.generator(z[:1], s[:1]) - models.generator(z[:1], s[1:])).abs().max() > 1e-3


def test_authors_mode_breaks_batch_independence(tiny_clip):
    models = _build(tiny_clip[0], "model.rat.hidden=8", "model.rat.mode=authors")
    _perturb(models.generator)
    models.generator.eval()
    # The authors' LSTM reads the batch as a sequence: a sample's image depends on those before it.
    assert _alone_vs_in_batch(models, 4) > 1e-3
    lstms = [m for m in models.generator.modules() if isinstance(m, torch.nn.LSTM)]
    assert len(lstms) == 2 * 2 * _cfg().model.bridge_blocks  # one per bridge affine layer


def test_h0_has_no_lstm_and_params_grow_with_h(tiny_clip):
    counts = []
    for scope in ("bridge", "all"):
        for mode in ("recurrent", "authors"):
            counts = []
            for hidden in HIDDENS:
                models = _build(tiny_clip[0], f"model.rat.hidden={hidden}", f"model.rat.scope={scope}", f"model.rat.mode={mode}")
                recurrent = [m for m in models.generator.modules() if isinstance(m, (torch.nn.LSTM, torch.nn.LSTMCell))]
                pc = param_counts(models)
                if hidden == 0:
                    assert not recurrent and pc["rat"]["trainable"] == 0
                else:
                    rat_layers = sum(1 for m in models.generator.affine_layers if m.recurrent)
                    assert len(recurrent) == (1 if mode == "recurrent" else rat_layers)
                assert pc["generator"]["trainable"] == pc["bridge"]["trainable"] + pc["generator_blocks"]["trainable"]
                counts.append(pc["total"]["trainable"])
            # For h > 0 the MLPs read h_t only, so the count grows strictly with h (h = 0 reads c instead).
            assert all(a < b for a, b in zip(counts[1:], counts[2:])), (scope, mode, counts)
    # h = 0 (RATLIP without RAT): plain affines whose MLPs read c = concat(z, s).
    models = _build(tiny_clip[0], "model.rat.hidden=0")
    first = models.generator.affine_layers[0].fc_gamma[0]
    assert first.in_features == models.generator.cond_dim == 16 + 32
    # h > 0: the RAT MLPs read the LSTM output h_t alone (RAT-GAN and the authors), in both modes.
    for mode in ("recurrent", "authors"):
        models = _build(tiny_clip[0], "model.rat.hidden=8", f"model.rat.mode={mode}")
        rat_layers = [m for m in models.generator.affine_layers if m.recurrent]
        assert rat_layers and all(m.fc_gamma[0].in_features == m.fc_beta[0].in_features == 8 for m in rat_layers)


def test_lstm_state_is_carried_across_layers(tiny_clip):
    models = _build(tiny_clip[0], "model.rat.hidden=8")
    g = models.generator
    _perturb(g)
    g.eval()
    z, s = _inputs(models, 3)
    cond = torch.cat([z, s], dim=1)
    with torch.no_grad():
        states = g.rat(z, cond)
        img, trace = g.trace_affines(z, s)
    rat_layers = [r for r in trace if r.recurrent]
    assert len(states) == len(rat_layers) == 2 * 2 * 2  # bridge blocks x fusions x affines
    assert all(not torch.allclose(a, b, atol=1e-4) for a, b in zip(states, states[1:]))
    assert rat_layers[0].name.startswith("bridge.0.") and not any(r.recurrent for r in trace[len(rat_layers):])
    assert len({tuple(r.gamma.shape) for r in trace}) > 1
    with torch.no_grad(), g.reset_rat_state_each_layer():
        reset_states = g.rat(z, cond)
        reset_img = g(z, s)
    assert all(torch.equal(reset_states[0], st) for st in reset_states)
    assert (reset_img - img).abs().max() > 1e-4
    with torch.no_grad():
        assert torch.equal(g(z, s), img)  # the switch is restored


# ---- gradients, seeds, saving --------------------------------------------------------------------


@pytest.mark.parametrize("d_backbone", ["clip", "cnn"])
def test_gradients_reach_trainable_and_not_clip(tiny_clip, d_backbone):
    models = _build(tiny_clip[0], "model.rat.hidden=8", "model.rat.scope=all", f"model.d_backbone={d_backbone}")
    g, d, head = models.generator, models.discriminator, models.head
    _perturb(g, d, head)  # zero-initialised gates and affine layers would block gradients at init
    for m in (g, d, head):
        m.train()
    z, s = _inputs(models, 3)
    fake = g(z, s)
    x, _ = d.encode(fake)
    loss = head(d(x), s).mean() - F.cosine_similarity(models.backbone.encode_image(fake), s).mean()
    loss.backward()
    for module in (g, d, head):
        for name, p in module.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in models.backbone.parameters())
    n_trainable = sum(p.numel() for m in (g, d, head) for p in trainable_parameters(m))
    assert n_trainable == param_counts(models)["total"]["trainable"]


def test_same_seed_same_weights_and_outputs(tiny_clip):
    a = _build(tiny_clip[0], seed=3)
    b = _build(tiny_clip[0], seed=3)
    c = _build(tiny_clip[0], seed=4)
    sa, sb, sc = (trainable_state_dict(m.generator) for m in (a, b, c))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    z, s = _inputs(a, 2)
    for m in (a, b):
        m.generator.eval()
    with torch.no_grad():
        assert torch.equal(a.generator(z, s), b.generator(z, s))


def test_trainable_state_dict_round_trip(tiny_clip):
    a = _build(tiny_clip[0], seed=1)
    _perturb(a.generator)
    state = trainable_state_dict(a.generator)
    assert state and not any(k.startswith("backbone.") for k in state)
    assert any("running_mean" in k for k in state)  # BatchNorm statistics travel with the weights
    b = _build(tiny_clip[0], seed=2)
    load_trainable_state_dict(b.generator, state)
    z, s = _inputs(a, 2)
    for m in (a, b):
        m.generator.eval()
    with torch.no_grad():
        assert torch.equal(a.generator(z, s), b.generator(z, s))
    other = _build(tiny_clip[0], "model.rat.hidden=4")
    with pytest.raises(RatlipError, match="model.rat.hidden"):
        load_trainable_state_dict(other.generator, state)


def test_bad_block_indices_and_groups_are_clear_errors(tiny_clip):
    with pytest.raises(RatlipError, match="model.prompt_blocks"):
        _build(tiny_clip[0], "model.prompt_blocks=[0, 5]")
    with pytest.raises(RatlipError, match="model.d_feature_blocks"):
        _build(tiny_clip[0], "model.d_feature_blocks=[0, 3]")
    with pytest.raises(RatlipError, match="sa_groups"):
        _build(tiny_clip[0], "model.sa_groups=3")


def test_param_table_rows(tiny_clip):
    rows = param_table(_cfg(), tiny_clip[0], [0, 8, 16])
    assert [r["h"] for r in rows] == [0, 8, 16]
    assert rows[0]["rat"] == 0 and 0 < rows[1]["rat"] < rows[2]["rat"] and rows[2]["trainable"] > rows[1]["trainable"]
    assert rows[0]["total"] == rows[0]["trainable"] + rows[0]["frozen"]
    text = format_param_table(rows)
    assert text.count("\n") == 4 and "G bridge" in text


def test_family_structures(tiny_clip):
    """ratlip: Conv_shuffle (conv without bias, BN, SA) as bridge conv2 and G-block c1 and c2; galip: plain biased convs."""
    from ratlip_cli.models.ratlip.generator import ConvShuffle, PlainConv

    ratlip = _build(tiny_clip[0]).generator
    for block in ratlip.blocks:
        assert isinstance(block.c1, ConvShuffle) and isinstance(block.c2, ConvShuffle)
        assert block.c1.conv.bias is None and isinstance(block.c1.bn, torch.nn.BatchNorm2d)
    assert all(isinstance(b.conv2, ConvShuffle) and b.conv1.bias is not None for b in ratlip.bridge)
    galip = _build(tiny_clip[0], "model.family=galip", "model.rat.hidden=0").generator
    kinds = {type(m) for m in galip.modules()}
    assert torch.nn.BatchNorm2d not in kinds and ConvShuffle not in kinds and PlainConv in kinds
    assert all(m.bias is not None for part in (galip.bridge, galip.blocks) for m in part.modules() if isinstance(m, torch.nn.Conv2d))
    assert not any(m.recurrent for m in galip.affine_layers)
    assert _cfg("model.family=galip").model.rat.hidden == 0  # implied by the family (issue 26)
    with pytest.raises(RatlipError, match="model.rat.hidden=0"):
        _cfg("model.family=galip", "model.rat.hidden=8")
    # Batch independence holds for galip too (no BatchNorm, no RAT).
    models = _build(tiny_clip[0], "model.family=galip", "model.rat.hidden=0")
    _perturb(models.generator, scale=0.03)
    models.generator.eval()
    assert _alone_vs_in_batch(models, 3) < 1e-5


def test_authors_clip_input_mapping_is_the_release_formula(tiny_clip):
    """clip.input_mapping=authors equals GALIP/RATLIP's transf_to_CLIP_input written out directly:
    F.interpolate(x*0.5+0.5, size) (nearest), then ((x+1)*0.5 - mean) / std."""
    clip, _ = tiny_clip
    authors, correct = ClipBackbone(clip, "authors"), ClipBackbone(clip)
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    size = authors.image_size
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    nearest = images[:, :, (torch.arange(size) * 48 // size)][:, :, :, (torch.arange(size) * 48 // size)]
    expected = ((nearest * 0.5 + 0.5 + 1) * 0.5 - mean) / std
    # The same elementwise ops in the same order (nearest resize copies): bit-exact (0 measured).
    torch.testing.assert_close(authors.to_clip_input(images), expected, atol=1e-6, rtol=0)
    # the double map squeezes pixels into [0.75, 1] before normalisation: not the correct input
    assert (authors.to_clip_input(images) - correct.to_clip_input(images)).abs().max() > 0.5
    with pytest.raises(RatlipError, match="input_mapping"):
        ClipBackbone(clip, "twice")
