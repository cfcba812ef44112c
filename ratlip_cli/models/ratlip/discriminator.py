"""The discriminator (GALIP's NetD) and the conditional head (GALIP's NetC).

`d_backbone: clip` (the paper): token grids of frozen CLIP ViT blocks `model.d_feature_blocks`,
stacked as x (B, n, W, g, g). The D path starts from x[:, 0]; each further grid joins one residual
D block (``x + gamma * conv_path(x) + beta * next_grid``, gamma and beta learned scalars starting
at 0); a final residual block maps W -> E (the CLIP embedding size) with a learned 1x1 shortcut.

`d_backbone: cnn`: a small learnable CNN on the images themselves (for tiny datasets trained with
random CLIP weights, whose features carry little signal); same (B, E, g', g') output, so the same
head works.

Head: concat(dmap (B, E, g, g), s tiled to g x g) -> conv k1 (2E -> 128, no bias) -> LeakyReLU(0.2)
-> conv k2 (128 -> 1, no bias), k1 = min(4, g), k2 = g - k1 + 1, so the output is 1 x 1 for any
grid (7 -> 4 -> 1 at ViT-B/32). Returns (B,) logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ratlip_cli.config import ModelConfig
from ratlip_cli.models.common.clip_backbone import ClipBackbone

HEAD_CHANNELS = 128


class DBlock(nn.Module):
    """``shortcut(x) + gamma * (conv3x3-LReLU-conv3x3-LReLU)(x) [+ beta * clip_feat]``."""

    def __init__(self, fin: int, fout: int, clip_feat: bool) -> None:
        super().__init__()
        self.conv_r = nn.Sequential(
            nn.Conv2d(fin, fout, 3, 1, 1, bias=False),
            nn.LeakyReLU(0.2),
            nn.Conv2d(fout, fout, 3, 1, 1, bias=False),
            nn.LeakyReLU(0.2),
        )
        # Unlike GALIP, the 1x1 shortcut exists only when it is used (no dead parameters).
        self.conv_s = nn.Conv2d(fin, fout, 1) if fin != fout else None
        self.gamma = nn.Parameter(torch.zeros(1))
        self.beta = nn.Parameter(torch.zeros(1)) if clip_feat else None

    def forward(self, x: torch.Tensor, clip_feat: torch.Tensor | None = None) -> torch.Tensor:
        res = self.conv_r(x)
        if self.conv_s is not None:
            x = self.conv_s(x)
        out = x + self.gamma * res
        if self.beta is not None:
            out = out + self.beta * clip_feat
        return out


def cnn_grid(image_size: int) -> int:
    """Output grid of `CNNEncoder`: halve (floor) while the size is at least 8."""
    size = image_size
    while size >= 8:
        size //= 2
    return size


class CNNEncoder(nn.Module):
    """A small learnable image encoder: (B, 3, S, S) -> (B, E, g', g'), g' = `cnn_grid(S)`."""

    def __init__(self, image_size: int, ndf: int, out_dim: int, spectral_norm: bool = False) -> None:
        super().__init__()

        def conv(*args, **kwargs) -> nn.Module:
            layer = nn.Conv2d(*args, **kwargs)
            return nn.utils.parametrizations.spectral_norm(layer) if spectral_norm else layer

        layers: list[nn.Module] = [conv(3, ndf, 3, 1, 1), nn.LeakyReLU(0.2)]
        ch, size, i = ndf, image_size, 0
        while size >= 8:
            out = ndf * min(2 ** (i + 1), 8)
            layers += [conv(ch, out, 4, 2, 1), nn.LeakyReLU(0.2)]
            ch, size, i = out, size // 2, i + 1
        layers.append(conv(ch, out_dim, 3, 1, 1))
        self.net = nn.Sequential(*layers)
        self.grid = size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def discriminator_grid(model_cfg: ModelConfig, backbone: ClipBackbone) -> int:
    """The spatial size of the discriminator's output map for this config."""
    return backbone.grid if model_cfg.d_backbone == "clip" else cnn_grid(model_cfg.image_size)


class Discriminator(nn.Module):
    """`encode(images) -> (x, pooled or None)`, `forward(x) -> (B, E, g, g)`.

    `x` is what MA-GP differentiates: the stacked CLIP block grids (B, n, W, g, g) for
    `d_backbone: clip`, the images (resized to model.image_size when needed) for `cnn`. For real
    images `x` does not require grad: call ``x.requires_grad_(True)`` before `forward` for MA-GP.
    """

    def __init__(self, model_cfg: ModelConfig, backbone: ClipBackbone) -> None:
        super().__init__()
        self.kind = model_cfg.d_backbone
        self.embed_dim = backbone.embed_dim
        self.image_size = model_cfg.image_size
        if self.kind == "clip":
            self.backbone = backbone  # shared and frozen
            self.feature_blocks = backbone.check_blocks(model_cfg.d_feature_blocks, "model.d_feature_blocks")
            w = backbone.width
            self.blocks = nn.ModuleList(DBlock(w, w, clip_feat=True) for _ in range(len(self.feature_blocks) - 1))
            self.main = DBlock(w, backbone.embed_dim, clip_feat=False)
            self.grid = backbone.grid
        elif self.kind == "cnn":
            self.feature_blocks = []
            self.cnn = CNNEncoder(model_cfg.image_size, model_cfg.ndf, backbone.embed_dim)
            self.grid = self.cnn.grid
        else:
            raise ValueError(f"unknown model.d_backbone {self.kind!r}")

    def encode(self, images: torch.Tensor, with_pooled: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images in [-1, 1] -> (x, pooled CLIP image embedding or None).

        `pooled` (clip only, and only with `with_pooled`) is the CLIP image embedding, handy for the
        generator's CLIP-similarity loss; `with_pooled=False` stops the ViT after the last D block.
        """
        if self.kind == "clip":
            feats, pooled = self.backbone.image_features(images, self.feature_blocks, with_pooled=with_pooled)
            return torch.stack(feats, dim=1), pooled
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
        return images, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "cnn":
            return self.cnn(x)
        out = x[:, 0]
        for i, block in enumerate(self.blocks):
            out = block(out, x[:, i + 1])
        return self.main(out)


class ConditionHead(nn.Module):
    """GALIP's NetC: ``forward(dmap (B, E, g, g), s (B, E)) -> (B,)`` logits."""

    def __init__(self, model_cfg: ModelConfig, backbone: ClipBackbone) -> None:
        super().__init__()
        e = backbone.embed_dim
        g = discriminator_grid(model_cfg, backbone)
        k1 = min(4, g)
        k2 = g - k1 + 1
        self.embed_dim, self.grid = e, g
        self.joint_conv = nn.Sequential(
            nn.Conv2d(2 * e, HEAD_CHANNELS, k1, 1, 0, bias=False),
            nn.LeakyReLU(0.2),
            nn.Conv2d(HEAD_CHANNELS, 1, k2, 1, 0, bias=False),
        )

    def forward(self, dmap: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        b, _, gh, gw = dmap.shape
        cond = s.to(dmap.dtype).view(b, self.embed_dim, 1, 1).expand(b, self.embed_dim, gh, gw)
        return self.joint_conv(torch.cat([dmap, cond], dim=1)).view(b)
