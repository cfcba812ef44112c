"""clean-fid's Inception-V3 as an eager network with each batch norm folded into its convolution.

The shipped TorchScript (`metrics.inception`) runs every conv unit as conv2d -> batch_norm -> relu,
three passes over each activation, and copies every branch to NCHW (`contiguous()`) before the
concatenations. For inference the batch norm is an affine map per channel, so it folds into the
convolution (w * s, beta - mean * s with s = 1 / sqrt(var + eps)): one oneDNN conv with bias, then
an in-place relu, two passes instead of three; without the copies, the network stays channels_last. Same weights, same
graph, the same order of branches; the outputs differ from the TorchScript's by float rounding only
(tests/test_inception.py bounds it and the FID difference). `ratlip eval` uses it by default
(`eval.inception_graph: auto` = folded for fid mode clean); `reference` runs the TorchScript itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # the TF network's batch norm epsilon, as the TorchScript's batch_norm call has it
INCEPTION_GRAPHS = ("auto", "folded", "reference")


class FoldedConv(nn.Module):
    """One `Conv2dLayer` (conv, batch norm with beta and no gamma, relu) as conv + bias + relu."""

    def __init__(self, unit: torch.jit.ScriptModule) -> None:
        super().__init__()
        scale = torch.rsqrt(unit.var.double() + BN_EPS)
        weight = unit.weight.double() * scale.view(-1, 1, 1, 1)
        bias = unit.beta.double() - unit.mean.double() * scale
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", bias.float())
        self.stride = int(unit.stride)
        padding = unit.padding
        self.padding = [int(p) for p in padding] if isinstance(padding, (list, tuple)) else int(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.conv2d(x, self.weight, self.bias, self.stride, self.padding), inplace=True)


class Chain(nn.Module):
    """A `Sequential`: children one after another."""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part(x)
        return x


class Branches(nn.Module):
    """InceptionA-D: every child on the block's input, outputs concatenated on channels in child order."""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], 1)


class InceptionE(nn.Module):
    """InceptionE (Mixed_7b/7c), whose two towers split into 1x3 and 3x1 convolutions."""

    def __init__(self, block: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.convs = nn.ModuleDict(
            {name: FoldedConv(child) for name, child in block.named_children() if child.original_name == "Conv2dLayer"}
        )
        self.pool = block.tower_2_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.convs
        a = c["tower_conv"](x)
        b = c["tower_1_conv_1"](c["tower_1_conv"](x))
        return torch.cat(
            [
                c["conv"](x),
                c["tower_mixed_conv"](a),
                c["tower_mixed_conv_1"](a),
                c["tower_1_mixed_conv"](b),
                c["tower_1_mixed_conv_1"](b),
                c["tower_2_conv"](self.pool(x)),
            ],
            1,
        )


def _convert(module: torch.jit.ScriptModule) -> nn.Module:
    kind = getattr(module, "original_name", type(module).__name__)
    if kind == "Conv2dLayer":
        return FoldedConv(module)
    if kind in ("MaxPool2d", "AvgPool2d"):
        return module  # the TorchScript's own pooling call (parameters, padding rules and all)
    parts = [_convert(child) for _, child in module.named_children()]
    if kind == "Sequential":
        return Chain(parts)
    if kind in ("InceptionA", "InceptionB", "InceptionC", "InceptionD"):
        return Branches(parts)
    if kind == "InceptionE":
        return InceptionE(module)
    raise ValueError(f"unexpected module {kind} in the Inception TorchScript")


def fold_inception(layers: torch.jit.ScriptModule) -> nn.Module:
    """The 19-layer TorchScript `layers` as an eager network with folded batch norms (frozen, eval mode)."""
    net = _convert(layers).eval()
    for param in net.parameters():
        param.requires_grad_(False)
    return net


class FoldedInception(nn.Module):
    """Pixels in [0, 255] (B, 3, 299, 299) -> (B, 2048) pool features, as `InceptionEncoder.forward`."""

    def __init__(self, layers: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.net = fold_inception(layers).to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images - 128) / 128).contiguous(memory_format=torch.channels_last)
        return self.net(x).reshape(images.shape[0], -1)
