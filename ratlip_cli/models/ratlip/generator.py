"""The generators of `model.family`: RATLIP (the authors' NetG) and GALIP (GALIP's NetG).

    c = concat(z, s)
    fc(z) -> (bridge_channels, g, g)
      -> bridge_blocks x RATBlock         conv3x3 -> fusion -> CONV -> fusion, + skip
      -> fused = conv5x5 -> CLIP width W
      -> mapped = frozen CLIP ViT blocks over `fused`, one prompt token (from fc(c)) per prompt block
      -> conv5x5(fused + mapper_scale * mapped) -> (C0, g, g)
      -> GBlocks (nearest upsampling to 8, 16, ..., the last to image_size):
             fusion -> CONV -> fusion -> CONV, + skip
      -> to_rgb: LeakyReLU(0.2) + conv3x3 -> (3, S, S), not squashed (clamp to [-1, 1] when saving)

CONV is RATLIP's ``Conv_shuffle`` (conv3x3 without bias -> BatchNorm -> LeakyReLU(0.01) ->
shuffle attention) for family ratlip, a plain conv3x3 with bias for family galip; with
`model.shuffle_attention: false` the ratlip CONV drops its shuffle attention and keeps everything else
(the SA half of the paper's RAT/SA ablation). A fusion is two
(affine -> LeakyReLU(0.2)); its affines are RAT affines (see rat.py) in the bridge when h > 0 (and in
the generator blocks with `model.rat.scope: all`), plain affines on c otherwise.
g and W come from the CLIP backbone; channels from GALIP's `get_G_in_out_chs` (see `g_channels`).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from ratlip_cli.config import ModelConfig
from ratlip_cli.models.ratlip.attention import ShuffleAttention
from ratlip_cli.models.common.clip_backbone import ClipBackbone
from ratlip_cli.models.ratlip.rat import AffineFeed, AffineFusion, AffineRecord, ConditionalAffine, RATRecurrence


def g_channels(ngf: int, image_size: int) -> list[tuple[int, int]]:
    """(in, out) channels of the generator blocks, as GALIP's `get_G_in_out_chs`.

    layer_num = log2(next power of two >= image_size) - 1; channel widths ngf * min(2**i, 8),
    widest first; consecutive pairs. 224 -> 6 blocks (8, 8, 8, 8, 4, 2, 1 x ngf), 64 -> 4, 32 -> 3.
    """
    layer_num = max(2, math.ceil(math.log2(image_size)) - 1)
    widths = [ngf * min(2**i, 8) for i in range(layer_num)][::-1]
    return list(zip(widths[:-1], widths[1:]))


def g_sizes(num_blocks: int, image_size: int) -> list[int]:
    """Output sizes of the generator blocks: 8, 16, 32, ... doubling, the last one `image_size`."""
    return [8 * 2**i for i in range(num_blocks - 1)] + [image_size]


# Nearest-2x upsampling then a 3x3 conv: output row 2i + a (a = 0, 1) reads input rows i + a - 1 and
# i + a only; _PHASE_TAPS[a][t][k] = 1 when kernel row k lands on the t-th of those two rows.
_PHASE_TAPS = (((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0)))


def _phase_kernel_map(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(9, 16): the 3x3 kernel taps (k, l) -> the four phases' 2x2 kernels (a, b, y, x)."""
    taps = torch.tensor(_PHASE_TAPS, dtype=torch.float32)
    return torch.einsum("ayk,bxl->klabyx", taps, taps).reshape(9, 16).to(device, dtype)


def upsample2x_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv2d(interpolate(x, scale 2, nearest), weight, bias, padding=1)`` at 4/9 of the FLOPs.

    Each of the four output phases (2i + a, 2j + b) of a 3x3 conv over a nearest-2x upsampled map
    is a 2x2 conv over the input with summed kernel taps; the four run as one conv with 4x the
    output channels, whose results are interleaved. Same result up to float rounding; differentiable.
    """
    b, _, h, w = x.shape
    out_ch, in_ch = weight.shape[:2]
    kernels = weight.reshape(out_ch * in_ch, 9) @ _phase_kernel_map(weight.dtype, weight.device)
    w4 = kernels.view(out_ch, in_ch, 2, 2, 2, 2).permute(2, 3, 0, 1, 4, 5).reshape(4 * out_ch, in_ch, 2, 2)
    b4 = bias.repeat(4) if bias is not None else None
    y = F.conv2d(x, w4, b4, padding=1)  # (B, 4 * O, h + 1, w + 1); phase (a, b) sits at offset (a, b)
    channels_last = y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    y = y.unflatten(1, (2, 2, out_ch))
    if channels_last:
        out = y.new_empty(b, h, 2, w, 2, out_ch).permute(0, 5, 1, 2, 3, 4)
    else:
        out = y.new_empty(b, out_ch, h, 2, w, 2)
    for pa in range(2):
        for pb in range(2):
            out[:, :, :, pa, :, pb] = y[:, pa, pb, :, pa : pa + h, pb : pb + w]
    return out.reshape(b, out_ch, 2 * h, 2 * w)


def _fold_bn(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``norm(conv(x))`` as one conv, for BatchNorm in eval mode (fixed statistics)."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return weight, bias


def _conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, upsample2x: bool) -> torch.Tensor:
    """A 3x3 conv (padding 1), on the nearest-2x upsampled x when `upsample2x`."""
    if upsample2x:
        return upsample2x_conv3x3(x, weight, bias)
    return F.conv2d(x, weight, bias, padding=1)


class ConvShuffle(nn.Module):
    """RATLIP's ``Conv_shuffle``: conv3x3 (no bias) -> BatchNorm -> LeakyReLU(0.01) -> shuffle attention.

    With ``shuffle_attention=False`` the block has no shuffle attention layer (``attn`` is None):
    conv3x3 -> BatchNorm -> LeakyReLU(0.01), nothing else changed.

    ``forward(x, upsample2x, residual)`` computes ``residual + CS(up(x))``; `upsample2x` folds a
    nearest-2x upsampling into the conv (`upsample2x_conv3x3`), and in eval mode BatchNorm folds into
    the conv (`_fold_bn`); both give the same result up to float rounding.
    """

    def __init__(self, in_ch: int, out_ch: int, sa_groups: int, shuffle_attention: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.attn = ShuffleAttention(out_ch, sa_groups) if shuffle_attention else None

    def forward(self, x: torch.Tensor, upsample2x: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.bn.training or self.bn.running_var is None:
            y = self.bn(_conv3x3(x, self.conv.weight, None, upsample2x))
        else:
            y = _conv3x3(x, *_fold_bn(self.conv, self.bn), upsample2x)
        y = F.leaky_relu(y, 0.01, inplace=True)  # nn.LeakyReLU()'s default slope, as the authors'
        if self.attn is None:
            return y if residual is None else residual + y
        return self.attn(y, residual=residual)


class PlainConv(nn.Module):
    """GALIP's plain ``Conv2d(3x3, bias=True)``, with the same call signature as `ConvShuffle`."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor, upsample2x: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
        y = _conv3x3(x, self.conv.weight, self.conv.bias, upsample2x)
        return y if residual is None else residual + y


def make_conv(family: str, in_ch: int, out_ch: int, sa_groups: int, shuffle_attention: bool = True) -> nn.Module:
    """The 3x3 conv of a bridge or generator block: `ConvShuffle` (ratlip; without its shuffle
    attention when `shuffle_attention` is False) or `PlainConv` (galip, which never has one)."""
    if family == "ratlip":
        return ConvShuffle(in_ch, out_ch, sa_groups, shuffle_attention)
    if family == "galip":
        return PlainConv(in_ch, out_ch)
    raise ValueError(f"unknown model.family {family!r}")


class RATBlock(nn.Module):
    """One bridge block (the authors' ``M_Block_RAT``, GALIP's ``M_Block``), residual.

    ``shortcut(x) + fuse2(conv2(fuse1(conv1(x))))``; conv1 is a plain conv3x3 with bias, conv2 a
    `ConvShuffle` (ratlip) or a plain conv (galip); fuse1/fuse2 are RAT fusions when h > 0.
    """

    def __init__(
        self, family: str, in_ch: int, mid_ch: int, out_ch: int, cond_dim: int, state_dim: int, sa_groups: int,
        shuffle_attention: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 3, 1, 1)
        self.fuse1 = AffineFusion(cond_dim, mid_ch, state_dim)
        self.conv2 = make_conv(family, mid_ch, out_ch, sa_groups, shuffle_attention)
        self.fuse2 = AffineFusion(cond_dim, out_ch, state_dim)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, feed: AffineFeed) -> torch.Tensor:
        r = self.fuse1(self.conv1(x), feed)
        r = self.fuse2(self.conv2(r), feed)
        return self.shortcut(x) + r


class GBlock(nn.Module):
    """A generator block (the authors' and GALIP's ``G_Block``), residual.

    Computes ``shortcut(up(x)) + c2(fuse2(c1(fuse1(up(x)))))`` with nearest upsampling ``up`` to the
    block size; c1 and c2 are `ConvShuffle` (ratlip) or plain convs (galip). For speed (same result
    up to float rounding) the per-pixel layers before c1 (fuse1) and the 1x1 shortcut run at the
    input size, before upsampling (nearest upsampling commutes with per-pixel maps); a 2x upsampling
    folds into c1's conv; the residual addition is fused into c2 (for shuffle attention, the
    channel shuffle is folded into it).
    """

    def __init__(
        self, family: str, in_ch: int, out_ch: int, size: int, cond_dim: int, state_dim: int, sa_groups: int,
        shuffle_attention: bool = True,
    ) -> None:
        super().__init__()
        self.size = size
        self.fuse1 = AffineFusion(cond_dim, in_ch, state_dim)
        self.c1 = make_conv(family, in_ch, out_ch, sa_groups, shuffle_attention)
        self.fuse2 = AffineFusion(cond_dim, out_ch, state_dim)
        self.c2 = make_conv(family, out_ch, out_ch, sa_groups, shuffle_attention)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, feed: AffineFeed) -> torch.Tensor:
        s = self.size
        in_size = tuple(x.shape[-2:])
        f = self.fuse1(x, feed)
        if in_size == (s, s):
            r = self.c1(f)
        elif in_size == (s // 2, s // 2) and s % 2 == 0:
            r = self.c1(f, upsample2x=True)
        else:
            r = self.c1(F.interpolate(f, size=(s, s), mode="nearest"))
        skip = self.shortcut(x)
        if in_size != (s, s):
            skip = F.interpolate(skip, size=(s, s), mode="nearest")
        return self.c2(self.fuse2(r, feed), residual=skip)


class Generator(nn.Module):
    """``forward(z (B, z_dim), s (B, E)) -> images (B, 3, S, S)`` (not squashed)."""

    def __init__(self, model_cfg: ModelConfig, backbone: ClipBackbone) -> None:
        super().__init__()
        cfg = model_cfg
        rat = cfg.rat
        self.backbone = backbone  # shared and frozen; left out of trainable_state_dict
        self.z_dim = cfg.z_dim
        self.image_size = cfg.image_size
        self.grid = backbone.grid
        self.width = backbone.width
        self.bridge_channels = cfg.bridge_channels
        self.prompt_blocks = backbone.check_blocks(cfg.prompt_blocks, "model.prompt_blocks")
        self.mapper_scale = float(cfg.mapper_scale)
        cond_dim = cfg.z_dim + backbone.embed_dim
        self.cond_dim = cond_dim
        self.family = cfg.family
        bridge_state = rat.hidden
        blocks_state = rat.hidden if rat.scope == "all" else 0

        # ---- RAT bridge ----
        self.fc_code = nn.Linear(cfg.z_dim, cfg.bridge_channels * self.grid * self.grid)
        self.bridge = nn.ModuleList(
            RATBlock(cfg.family, cfg.bridge_channels, cfg.bridge_mid_channels, cfg.bridge_channels, cond_dim, bridge_state,
                     cfg.sa_groups, cfg.shuffle_attention)
            for _ in range(cfg.bridge_blocks)
        )
        self.conv_fuse = nn.Conv2d(cfg.bridge_channels, self.width, 5, 1, 2)
        self.fc_prompt = nn.Linear(cond_dim, self.width * len(self.prompt_blocks)) if self.prompt_blocks else None
        pairs = g_channels(cfg.ngf, cfg.image_size)
        self.conv_out = nn.Conv2d(self.width, pairs[0][0], 5, 1, 2)

        # ---- generator blocks ----
        sizes = g_sizes(len(pairs), cfg.image_size)
        self.blocks = nn.ModuleList(
            GBlock(cfg.family, i, o, size, cond_dim, blocks_state, cfg.sa_groups, cfg.shuffle_attention)
            for (i, o), size in zip(pairs, sizes)
        )
        self.to_rgb = nn.Sequential(nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(pairs[-1][1], 3, 3, 1, 1))

        # ---- the recurrence shared by every RAT affine layer, in forward order ----
        self.affine_layers: list[ConditionalAffine] = []
        for name, module in self.named_modules():
            if isinstance(module, ConditionalAffine):
                module.trace_name = name
                self.affine_layers.append(module)
        num_rat = sum(1 for m in self.affine_layers if m.recurrent)
        self.rat = RATRecurrence(cond_dim, cfg.z_dim, rat.hidden, num_rat, rat.mode)
        # Speed only (not a config key, no effect on results beyond float rounding): the image
        # blocks run on channels_last (NHWC) activations, which oneDNN and cuDNN convolve faster.
        self.channels_last = True

    def part_modules(self) -> dict[str, list[nn.Module]]:
        """The trainable parts for parameter accounting: bridge (with the RAT recurrence) and blocks."""
        bridge = [self.fc_code, self.bridge, self.conv_fuse, self.conv_out, self.rat]
        if self.fc_prompt is not None:
            bridge.append(self.fc_prompt)
        return {"bridge": bridge, "rat": [self.rat], "generator_blocks": [self.blocks, self.to_rgb]}

    def _forward(self, z: torch.Tensor, s: torch.Tensor, trace: list[AffineRecord] | None) -> torch.Tensor:
        b = z.shape[0]
        cond = torch.cat([z, s.to(z.dtype)], dim=1)
        feed = AffineFeed(cond=cond, states=self.rat(z, cond), trace=trace)
        x = self.fc_code(z).view(b, self.bridge_channels, self.grid, self.grid)
        for block in self.bridge:
            x = block(x, feed)
        fused = self.conv_fuse(x)
        if self.fc_prompt is not None:
            prompts = self.fc_prompt(cond).view(b, len(self.prompt_blocks), self.width)
        else:
            prompts = fused.new_zeros(b, 0, self.width)
        mapped = self.backbone.map_with_prompts(fused, prompts, self.prompt_blocks)
        x = self.conv_out(fused + self.mapper_scale * mapped)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for block in self.blocks:
            x = block(x, feed)
        feed.check_consumed()
        return self.to_rgb(x).contiguous()

    def forward(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self._forward(z, s, None)

    def trace_affines(self, z: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, list[AffineRecord]]:
        """Run a forward and also return every affine layer's (gamma, beta), in forward order."""
        trace: list[AffineRecord] = []
        return self._forward(z, s, trace), trace

    @contextlib.contextmanager
    def reset_rat_state_each_layer(self):
        """Debugging: restart the LSTM from (h0, c0) at every RAT layer (no carried state) inside the block."""
        old = self.rat.reset_each_layer
        self.rat.reset_each_layer = True
        try:
            yield self
        finally:
            self.rat.reset_each_layer = old
