"""Grad-CAM (Selvaraju et al., ICCV 2017): where in an image a network finds the evidence for a score.

For a scalar score y per sample and the activations A (B, C, h, w) of a target layer,

    alpha_c = mean_ij dy/dA_cij          (the channel's importance: its gradient, global-average pooled)
    map     = ReLU(sum_c alpha_c A_c)    (B, h, w), on the layer's own grid

`grad_cam` computes this for any network given as a score function, an input and a module whose
output (or input, `at_input`) is the target layer. The two targets of `eval.gradcam_target`:
`clip_gradcam` (the default) is the evaluation CLIP's image-text cosine (the quantity CLIP score
averages) at the token grid that enters its last ViT block (`eval.gradcam_block`);
`discriminator_gradcam` is a run's own discriminator: its conditional logit (NetC on NetD's
output) at NetD's feature grid (docs/evaluation.md "Grad-CAM" says which to use when).
`object_share` turns maps into the number of docs/ablation.md: the fraction of the map's mass
inside an object mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ratlip_cli.errors import RatlipError

# The targets `eval.gradcam_target` may name (config.CHOICES lists the same).
GRADCAM_TARGETS = ("clip", "discriminator")


def grad_cam(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    layer: nn.Module,
    at_input: bool = False,
    to_grid: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Grad-CAM maps (B, h, w) of ``score_fn(inputs)`` (one score per sample, shape (B,)) at `layer`.

    The target activations are `layer`'s output, or its first positional input with `at_input`;
    `to_grid` turns them into (B, C, h, w) (e.g. `vit_token_grid`; default: they already are).
    The maps are not normalised (a map is 0 where no channel with positive weight is active).
    Gradients are taken with respect to those activations only, so the network may be frozen and
    `inputs` need not require gradients; samples must not interact (eval-mode BatchNorm, LayerNorm).
    """
    captured: dict[str, torch.Tensor] = {}

    def swap(t: torch.Tensor) -> torch.Tensor:
        leaf = t.detach().requires_grad_(True)
        captured["a"] = leaf
        return leaf

    if at_input:
        handle = layer.register_forward_pre_hook(lambda _m, args: (swap(args[0]), *args[1:]))
    else:
        handle = layer.register_forward_hook(lambda _m, _args, out: swap(out))
    try:
        with torch.enable_grad():
            scores = score_fn(inputs)
            if "a" not in captured:
                raise RatlipError("Grad-CAM: the target layer was not run by the network's forward pass")
            if scores.ndim != 1 or scores.shape[0] != inputs.shape[0]:
                raise RatlipError(f"Grad-CAM needs one score per sample, got shape {tuple(scores.shape)}")
            (grad,) = torch.autograd.grad(scores.sum(), captured["a"], allow_unused=True)
    finally:
        handle.remove()
    acts = captured["a"].detach()
    if grad is None:
        grad = torch.zeros_like(acts)
    if to_grid is not None:
        acts, grad = to_grid(acts), to_grid(grad)
    if acts.ndim != 4:
        raise RatlipError(f"Grad-CAM needs (B, C, h, w) activations, got shape {tuple(acts.shape)}")
    weights = grad.float().mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * acts.float()).sum(dim=1))


def vit_token_grid(tokens: torch.Tensor, batch_first: bool = True) -> torch.Tensor:
    """ViT tokens (B, 1 + g*g, C) ((1 + g*g, B, C) when not batch first) -> (B, C, g, g), class token dropped."""
    if not batch_first:
        tokens = tokens.transpose(0, 1)
    b, n, c = tokens.shape
    g = round((n - 1) ** 0.5)
    if g * g != n - 1:
        raise RatlipError(f"Grad-CAM: {n} ViT tokens are not a class token plus a square grid")
    return tokens[:, 1:].transpose(1, 2).reshape(b, c, g, g)


def clip_gradcam(scorer, images: Sequence[np.ndarray], captions: Sequence[str], block: int = -1) -> torch.Tensor:
    """Grad-CAM maps (B, g, g) of the evaluation CLIP's image-caption cosine, on the token grid entering ViT block `block`.

    `scorer` is a `metrics.clip_score.ClipScorer`; `images` uint8 (H, W, 3) arrays, preprocessed by
    the scorer's own eval transform (for square images: a plain resize, so the grid covers the
    whole image); `block` indexes ``visual.transformer.resblocks`` (-1: the last block, whose
    input is the last token grid the class token reads).
    """
    from PIL import Image

    if len(images) != len(captions):
        raise RatlipError(f"Grad-CAM: {len(images)} images but {len(captions)} captions")
    model = scorer.model
    transformer = getattr(model.visual, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None:
        raise RatlipError("Grad-CAM with eval.gradcam_target=clip needs a ViT evaluation CLIP (eval.clip_arch ViT-...)")
    if not -len(blocks) <= block < len(blocks):
        raise RatlipError(f"eval.gradcam_block={block} is not a block of the evaluation CLIP's {len(blocks)}-block ViT")
    batch = torch.stack([scorer.transform(Image.fromarray(img)) for img in images]).to(scorer.device)
    text = scorer.embed_texts(list(captions)).to(scorer.device)

    def cosine(x: torch.Tensor) -> torch.Tensor:
        return (F.normalize(model.encode_image(x).float(), dim=-1) * text).sum(-1)

    to_grid = partial(vit_token_grid, batch_first=bool(getattr(transformer, "batch_first", True)))
    return grad_cam(cosine, batch, blocks[block], at_input=True, to_grid=to_grid).cpu()


def discriminator_gradcam(discriminator: nn.Module, head: nn.Module, images: torch.Tensor,
                          condition: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps (B, g, g) of the conditional logit ``head(D(x), s)`` at D's output feature grid.

    `discriminator` is a `models.discriminator.Discriminator` (``encode`` then ``forward`` gives
    (B, E, g, g)), `head` its `ConditionHead`, `images` (B, 3, H, W) in [-1, 1], `condition` the
    sentence embeddings (B, E) the head was trained with. Both networks should be in eval mode.
    """
    def logit(x: torch.Tensor) -> torch.Tensor:
        feats, _ = discriminator.encode(x, with_pooled=False)
        return head(discriminator(feats), condition.to(x.device)).float()

    return grad_cam(logit, images, discriminator).cpu()


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) maps -> (B, H, W), bilinear (Grad-CAM's upsampling to the image), clamped at 0."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0].clamp_min(0)


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each map divided by its maximum (all-zero maps stay zero), for display."""
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, *([1] * (maps.ndim - 1)))
    return maps / peak


def object_share(map_: np.ndarray | torch.Tensor, mask: np.ndarray) -> float | None:
    """The fraction of a (non-negative) map's mass inside a boolean mask of the same shape; None for an all-zero map."""
    m = np.asarray(map_.detach().cpu() if isinstance(map_, torch.Tensor) else map_, dtype=np.float64)
    if m.shape != mask.shape:
        raise RatlipError(f"Grad-CAM map {m.shape} and mask {mask.shape} differ in shape")
    m = np.clip(m, 0.0, None)
    total = float(m.sum())
    if total <= 0.0:
        return None
    return float(m[mask.astype(bool)].sum() / total)
