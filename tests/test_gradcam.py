"""Grad-CAM against direct computations, and the object share on images whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ratlip_cli.errors import RatlipError
from ratlip_cli.metrics.clip_score import ClipScorer
from ratlip_cli.metrics.gradcam import (
    clip_gradcam,
    grad_cam,
    normalise_maps,
    object_share,
    upsample_maps,
    vit_token_grid,
)


class QuadrantNet(nn.Module):
    """A CNN that only looks at the top-left quadrant: input masked, 1x1 conv (no bias), average pool, linear."""

    def __init__(self, channels: int = 5) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, channels, 1, bias=False)
        self.head = nn.Linear(channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        mask = torch.zeros(1, 1, h, w)
        mask[..., : h // 2, : w // 2] = 1.0
        a = self.features(x * mask)  # zero outside the quadrant
        return self.head(a.mean(dim=(2, 3)))[:, 0]


def test_quadrant_cnn_map_is_the_closed_form_and_zero_outside_the_quadrant():
    torch.manual_seed(0)
    net = QuadrantNet()
    x = torch.rand(4, 3, 8, 8)
    maps = grad_cam(net, x, net.features)
    # y = sum_c w_c mean_ij A_cij, so dy/dA_cij = w_c / (h w) = alpha_c and map = ReLU(sum_c alpha_c A_c).
    with torch.no_grad():
        h, w = x.shape[-2:]
        mask = torch.zeros(1, 1, h, w)
        mask[..., :4, :4] = 1
        acts = net.features(x * mask)
        alpha = net.head.weight[0] / (h * w)
        want = F.relu((alpha.view(1, -1, 1, 1) * acts).sum(1))
    assert maps.shape == (4, 8, 8)
    assert torch.allclose(maps, want, atol=1e-7)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[:4, :4] = False
    assert float(maps[:, outside].abs().max()) == 0.0
    assert float(maps[:, :4, :4].max()) > 0.0  # the quadrant carries the evidence


def test_layer_input_and_errors():
    torch.manual_seed(1)
    net = QuadrantNet()
    x = torch.rand(2, 3, 8, 8)
    # The head's input is the pooled (B, C) vector: as a 1x1 grid its map is ReLU(sum_c w_c v_c) = ReLU(y).
    pooled = grad_cam(net, x, net.head, at_input=True, to_grid=lambda t: t[:, :, None, None])
    assert torch.allclose(pooled[:, 0, 0], F.relu(net(x)).detach(), atol=1e-6)
    with pytest.raises(RatlipError, match="not run"):
        grad_cam(net, x, nn.Conv2d(1, 1, 1))
    with pytest.raises(RatlipError, match="one score per sample"):
        grad_cam(lambda t: net(t).sum(), x, net.features)


def test_vit_token_grid_layout():
    b, g, c = 2, 3, 4
    tokens = torch.zeros(b, 1 + g * g, c)
    for r in range(g):
        for q in range(g):
            tokens[:, 1 + r * g + q] = 10 * r + q
    grid = vit_token_grid(tokens)
    assert grid.shape == (b, c, g, g)
    assert grid[0, 0, 2, 1] == 21 and grid[1, 3, 0, 2] == 2
    assert torch.equal(vit_token_grid(tokens.transpose(0, 1), batch_first=False), grid)
    with pytest.raises(RatlipError, match="square grid"):
        vit_token_grid(torch.zeros(1, 11, 4))


def test_clip_gradcam_equals_a_direct_autograd_computation(tiny_clip):
    model, tokenizer = tiny_clip
    scorer = ClipScorer(model, tokenizer, "cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    captions = ["a big red circle on a blue background", "a small green square", "a white triangle"]
    maps = clip_gradcam(scorer, images, captions, block=-1)
    g = model.visual.grid_size[0]  # 32 px / patch 8 = 4
    assert maps.shape == (3, g, g)

    # Direct: the input of the last block kept with retain_grad, the cosine's gradient, the formula by hand.
    from PIL import Image

    kept = {}

    def keep(_m, args):
        args[0].retain_grad()
        kept["a"] = args[0]

    batch = torch.stack([scorer.transform(Image.fromarray(i)) for i in images]).requires_grad_(True)
    handle = model.visual.transformer.resblocks[-1].register_forward_pre_hook(keep)
    try:
        text = F.normalize(model.encode_text(tokenizer(captions)).float(), dim=-1).detach()
        cos = (F.normalize(model.encode_image(batch).float(), dim=-1) * text).sum(-1)
        cos.sum().backward()
    finally:
        handle.remove()
    a, da = kept["a"].detach(), kept["a"].grad
    if not getattr(model.visual.transformer, "batch_first", True):
        a, da = a.transpose(0, 1), da.transpose(0, 1)
    want = torch.zeros(3, g, g)
    for n in range(3):
        alpha = da[n, 1:].mean(0)  # (C,): the gradient averaged over the g*g patch tokens
        want[n] = F.relu((a[n, 1:] * alpha).sum(-1)).view(g, g)
    assert torch.allclose(maps, want, atol=1e-6, rtol=1e-5)
    assert float(maps.sum()) > 0
    with pytest.raises(RatlipError, match="gradcam_block"):
        clip_gradcam(scorer, images, captions, block=7)


def test_object_share_known_answers():
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True  # 4 of 16 pixels
    m = np.zeros((4, 4))
    m[0, 0], m[3, 3] = 3.0, 1.0
    assert object_share(m, mask) == pytest.approx(0.75)
    assert object_share(np.ones((4, 4)), mask) == pytest.approx(0.25)  # a flat map scores the object's area
    assert object_share(np.zeros((4, 4)), mask) is None
    with pytest.raises(RatlipError, match="differ in shape"):
        object_share(np.ones((2, 2)), mask)


def test_upsample_and_normalise():
    maps = torch.tensor([[[0.0, 2.0], [2.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    up = upsample_maps(maps, (4, 4))
    assert up.shape == (2, 4, 4) and float(up.min()) >= 0
    assert float(up[0].mean()) == pytest.approx(2.0)  # bilinear keeps the mean of this map
    norm = normalise_maps(up)
    assert float(norm[0].max()) == pytest.approx(1.0) and float(norm[1].abs().max()) == 0.0


def _shape_image(shape: str, size: int = 64, extent: float = 0.5):
    from ratlip_cli.data.shapes import render_spec

    spec = {"colour": "red", "shape": shape, "background": "blue", "size": "big", "extent": extent, "cx": 0.5, "cy": 0.5}
    return np.asarray(render_spec(spec, size))


@pytest.mark.parametrize("shape,area_factor", [("square", 1.0), ("circle", np.pi / 4), ("triangle", 0.5)])
def test_checker_object_mask_is_the_drawn_object(shape, area_factor):
    from ratlip_cli.data.shapes import object_mask

    image = _shape_image(shape)
    mask = object_mask(image)
    assert mask.shape == (64, 64) and mask.dtype == bool
    assert mask.mean() == pytest.approx(area_factor * 0.25, abs=0.02)  # extent 0.5 of the side
    assert not mask[:14].any() and not mask[-14:].any()  # nothing outside the drawn box
    flat = np.full((64, 64, 3), 40, dtype=np.uint8)
    assert not object_mask(flat).any()


def test_shapes_object_share_known_answers():
    from ratlip_cli.data.shapes import object_mask
    from ratlip_cli.gradcam import shapes_object_share

    images = [_shape_image("square"), _shape_image("circle", extent=0.3)]
    masks = [object_mask(i) for i in images]
    inside = shapes_object_share(images, [m.astype(float) for m in masks])  # maps exactly on the objects
    assert inside["share"] == pytest.approx(1.0) and inside["n"] == 2 and inside["skipped"] == 0
    assert inside["area"] == pytest.approx(np.mean([m.mean() for m in masks]))
    flat = shapes_object_share(images, [np.ones((64, 64)), np.ones((64, 64))])  # maps ignoring the object
    assert flat["share"] == pytest.approx(flat["area"])
    outside = shapes_object_share(images, [(~m).astype(float) for m in masks])
    assert outside["share"] == pytest.approx(0.0)
    none = shapes_object_share([np.full((64, 64, 3), 40, dtype=np.uint8)], [np.ones((64, 64))])
    assert none == {"share": None, "area": None, "n": 0, "skipped": 1}


def test_figure_has_one_image_pair_per_caption_and_a_row_per_run(tmp_path):
    from PIL import Image

    from ratlip_cli.gradcam import GradcamRow, gradcam_figure

    img = _shape_image("square", 32)
    rows = [GradcamRow(f"h={h}", [img, img, img], [np.ones((32, 32))] * 3) for h in (0, 64)]
    out = tmp_path / "g.png"
    gradcam_figure(rows, ["a", "b", "c"], out, "title")
    small = tmp_path / "s.png"
    gradcam_figure(rows[:1], ["a"], small)
    w, h = Image.open(out).size
    ws, hs = Image.open(small).size
    assert w > ws and h > hs  # more columns and rows -> a wider and taller figure
    assert w == round((1.3 * 6 + 1.2) * 110) and h == round((1.45 * 2 + 0.9) * 110)


def test_patch_tokens_after_the_last_block_carry_no_evidence(tiny_clip):
    """Why the target is the last block's input: the embedding reads only the class token after the last block."""
    from functools import partial

    model, tokenizer = tiny_clip
    scorer = ClipScorer(model, tokenizer, "cpu")
    from PIL import Image

    rng = np.random.default_rng(0)
    batch = torch.stack([scorer.transform(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
                         for _ in range(2)])
    text = scorer.embed_texts(["a red circle", "a blue square"])

    def cosine(x):
        return (F.normalize(model.encode_image(x).float(), dim=-1) * text).sum(-1)

    to_grid = partial(vit_token_grid, batch_first=bool(getattr(model.visual.transformer, "batch_first", True)))
    last_output = grad_cam(cosine, batch, model.visual.transformer.resblocks[-1], to_grid=to_grid)
    last_input = grad_cam(cosine, batch, model.visual.transformer.resblocks[-1], at_input=True, to_grid=to_grid)
    assert float(last_output.abs().max()) == 0.0
    assert float(last_input.max()) > 0.0


@pytest.mark.parametrize("d_backbone", ["clip", "cnn"])
def test_discriminator_gradcam_equals_a_direct_autograd_computation(tiny_clip, d_backbone):
    from ratlip_cli.config import resolve_config
    from ratlip_cli.metrics.gradcam import discriminator_gradcam
    from ratlip_cli.models.ratlip.build import build_models

    torch.manual_seed(0)
    models = build_models(resolve_config("tiny", overrides=[f"model.d_backbone={d_backbone}"]), tiny_clip[0])
    d, head = models.discriminator.eval(), models.head.eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 32, 32, generator=gen) * 2 - 1
    s = torch.randn(3, head.embed_dim, generator=gen)
    maps = discriminator_gradcam(d, head, x, s)

    feats, _ = d.encode(x, with_pooled=False)
    dmap = d(feats)
    dmap.retain_grad()
    head(dmap, s).sum().backward()
    alpha = dmap.grad.mean(dim=(2, 3), keepdim=True)
    want = F.relu((alpha * dmap.detach()).sum(1))
    assert maps.shape == (3, d.grid, d.grid) == want.shape
    assert torch.allclose(maps, want, atol=1e-6, rtol=1e-5)
    assert float(maps.sum()) > 0
