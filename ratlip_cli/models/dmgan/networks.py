"""DM-GAN's generator and discriminators (MinfengZhu/DM-GAN ``code/model.py``), layer for layer.

Attribute names follow the reference so a released state dict maps key for key (spectral-norm
weights aside: torch's parametrisation names them differently). Generalisation beyond the
reference: ``base_size`` (the first stage's resolution) may be 8, 16, 32 or 64; at 64 (the
reference) every layer is the reference's, smaller bases drop upsampling / downsampling steps
(the *small variant* used by the ``shapes`` preset; see docs/architecture.md).

Deliberate difference (selectable): the reference expands the word mask with ``mask.repeat(queryL, 1)``,
which pairs query rows of sample b with the mask of sample ``row % B`` (a layout slip shared with
AttnGAN's attention); ``memory_mask="correct"`` (default) masks each sample's own padding,
``"reference"`` reproduces the slip.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize


class GLU(nn.Module):
    """Gated linear unit over channels: x[:, :C/2] * sigmoid(x[:, C/2:])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nc = x.size(1) // 2
        return x[:, :nc] * torch.sigmoid(x[:, nc:])


def conv1x1(in_planes: int, out_planes: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=1, padding=0, bias=bias)


def conv3x3(in_planes: int, out_planes: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=bias)


def up_block(in_planes: int, out_planes: int) -> nn.Sequential:
    """Reference ``upBlock``: nearest x2, conv3x3 to 2*out, BatchNorm, GLU."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv3x3(in_planes, out_planes * 2),
                         nn.BatchNorm2d(out_planes * 2), GLU())


class ResBlock(nn.Module):
    """Reference ``ResBlock``: conv3x3 (2C) - BN - GLU - conv3x3 (C) - BN, plus the input."""

    def __init__(self, channel_num: int) -> None:
        super().__init__()
        self.block = nn.Sequential(conv3x3(channel_num, channel_num * 2), nn.BatchNorm2d(channel_num * 2), GLU(),
                                   conv3x3(channel_num, channel_num), nn.BatchNorm2d(channel_num))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + x


def _log2_steps(base_size: int) -> int:
    steps = int(round(math.log2(base_size / 4)))
    if base_size < 8 or 4 * 2**steps != base_size:
        raise ValueError(f"base_size must be 8, 16, 32 or 64 (4 times a power of two), got {base_size}")
    return steps


class CANet(nn.Module):
    """Conditioning augmentation (reference ``CA_NET``): fc -> GLU -> (mu, logvar); c = mu + eps * exp(logvar / 2)."""

    def __init__(self, t_dim: int, c_dim: int) -> None:
        super().__init__()
        self.t_dim, self.c_dim = t_dim, c_dim
        self.fc = nn.Linear(t_dim, c_dim * 4, bias=True)
        self.relu = GLU()

    def encode(self, text_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.relu(self.fc(text_embedding))
        return x[:, : self.c_dim], x[:, self.c_dim :]

    def forward(self, text_embedding: torch.Tensor, eps: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c, mu, logvar); ``eps`` ~ N(0, 1) is drawn from the global RNG unless given."""
        mu, logvar = self.encode(text_embedding)
        std = logvar.mul(0.5).exp()
        if eps is None:
            eps = torch.randn_like(std)
        return eps * std + mu, mu, logvar


class InitStageG(nn.Module):
    """Stage 0 (reference ``INIT_STAGE_G``): FC(c, z) -> BN1d -> GLU -> 4x4 map -> upsampling to ``base_size``."""

    def __init__(self, ngf: int, z_dim: int, ncf: int, base_size: int = 64) -> None:
        super().__init__()
        steps = _log2_steps(base_size)
        self.gf_dim = ngf * 2**steps  # the reference passes ngf * 16 for its four upsamplings
        self.in_dim = z_dim + ncf
        gf = self.gf_dim
        self.fc = nn.Sequential(nn.Linear(self.in_dim, gf * 4 * 4 * 2, bias=False), nn.BatchNorm1d(gf * 4 * 4 * 2), GLU())
        for k in range(1, steps + 1):
            self.add_module(f"upsample{k}", up_block(gf // 2 ** (k - 1), gf // 2**k))
        self.steps = steps

    def forward(self, z_code: torch.Tensor, c_code: torch.Tensor) -> torch.Tensor:
        out = self.fc(torch.cat((c_code, z_code), 1)).view(-1, self.gf_dim, 4, 4)
        for k in range(1, self.steps + 1):
            out = getattr(self, f"upsample{k}")(out)
        return out


def memory_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                     mask_layout: str = "correct") -> tuple[torch.Tensor, torch.Tensor]:
    """Key addressing and value reading (reference ``Memory.forward``).

    query (B, C, h, w), key/value (B, C, T), mask (B, T) True at padding ->
    (read-out (B, C, h, w), weights (B, T, h, w)); softmax over the memory slots.
    """
    b, _, ih, iw = query.shape
    q_len, t = ih * iw, key.shape[2]
    weight = torch.bmm(query.reshape(b, -1, q_len).transpose(1, 2), key)  # (B, Q, T)
    if mask is not None:
        if mask_layout == "reference":
            full = mask.repeat(q_len, 1).view(b, q_len, t)
        else:
            full = mask.unsqueeze(1).expand(b, q_len, t)
        weight = weight.masked_fill(full, float("-inf"))
    weight = F.softmax(weight, dim=2).transpose(1, 2)  # (B, T, Q)
    out = torch.bmm(value, weight)
    return out.view(b, -1, ih, iw), weight.reshape(b, -1, ih, iw)


class NextStageG(nn.Module):
    """Stages 1 and 2 (reference ``NEXT_STAGE_G``): dynamic memory -> residual blocks -> upsampling.

    Memory writing: gate g_w = sigmoid(A w_i + B r_bar) per word, memory m_i = M_w(w_i) g_w +
    M_r(r_bar) (1 - g_w) with r_bar the (detached) spatial mean of the image features; key and
    value memories from m; attention of every pixel over the words; response gate g_r =
    sigmoid(conv1x1[h, o]), h' = h (1 - g_r) + o g_r; then [h', h'] through R_NUM ResBlocks and an upBlock.
    """

    def __init__(self, ngf: int, nef: int, size: int, r_num: int = 2, mask_layout: str = "correct") -> None:
        super().__init__()
        self.gf_dim, self.ef_dim, self.size, self.mask_layout = ngf, nef, size, mask_layout
        self.avg = nn.AvgPool2d(kernel_size=size)
        self.A = nn.Linear(nef, 1, bias=False)
        self.B = nn.Linear(ngf, 1, bias=False)
        self.M_r = nn.Sequential(nn.Conv1d(ngf, ngf * 2, kernel_size=1), nn.ReLU())
        self.M_w = nn.Sequential(nn.Conv1d(nef, ngf * 2, kernel_size=1), nn.ReLU())
        self.key = nn.Sequential(nn.Conv1d(ngf * 2, ngf, kernel_size=1), nn.ReLU())
        self.value = nn.Sequential(nn.Conv1d(ngf * 2, ngf, kernel_size=1), nn.ReLU())
        self.response_gate = nn.Sequential(nn.Conv2d(ngf * 2, 1, kernel_size=1), nn.Sigmoid())
        self.residual = nn.Sequential(*[ResBlock(ngf * 2) for _ in range(r_num)])
        self.upsample = up_block(ngf * 2, ngf)

    def write_memory(self, h_code: torch.Tensor, word_embs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(memory (B, 2*ngf, T), writing gate (B, 1, T))."""
        t = word_embs.shape[2]
        h_avg = self.avg(h_code).detach().squeeze(3)  # (B, ngf, 1)
        gate1 = self.A(word_embs.transpose(1, 2)).transpose(1, 2)  # (B, 1, T)
        gate2 = self.B(h_avg.transpose(1, 2)).repeat(1, 1, t)
        writing_gate = torch.sigmoid(gate1 + gate2)
        memory = self.M_w(word_embs) * writing_gate + self.M_r(h_avg.repeat(1, 1, t)) * (1 - writing_gate)
        return memory, writing_gate

    def respond(self, h_code: torch.Tensor, memory_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(refined features (B, ngf, h, w), response gate (B, 1, h, w))."""
        gate = self.response_gate(torch.cat((h_code, memory_out), 1))
        return h_code * (1 - gate) + gate * memory_out, gate

    def forward(self, h_code: torch.Tensor, word_embs: torch.Tensor, mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        memory, _ = self.write_memory(h_code, word_embs)
        memory_out, att = memory_attention(h_code, self.key(memory), self.value(memory), mask, self.mask_layout)
        h_new, _ = self.respond(h_code, memory_out)
        out = self.upsample(self.residual(torch.cat((h_new, h_new), 1)))
        return out, att


class GetImageG(nn.Module):
    """Reference ``GET_IMAGE_G``: conv3x3 to RGB (no bias), tanh."""

    def __init__(self, ngf: int) -> None:
        super().__init__()
        self.img = nn.Sequential(conv3x3(ngf, 3), nn.Tanh())

    def forward(self, h_code: torch.Tensor) -> torch.Tensor:
        return self.img(h_code)


class DmganGenerator(nn.Module):
    """Reference ``G_NET``: CA -> stage 0 -> (memory stage 1) -> (memory stage 2); an image per stage.

    ``forward(z, sentence, words, mask, eps=None)`` returns (images per stage, attention maps, mu, logvar).
    """

    def __init__(self, ngf: int = 64, nef: int = 256, ncf: int = 100, z_dim: int = 100, branch_num: int = 3,
                 base_size: int = 64, r_num: int = 2, mask_layout: str = "correct") -> None:
        super().__init__()
        if not 1 <= branch_num <= 3:
            raise ValueError(f"branch_num must be 1, 2 or 3, got {branch_num}")
        self.z_dim, self.c_dim, self.branch_num, self.base_size = z_dim, ncf, branch_num, base_size
        self.ca_net = CANet(nef, ncf)
        self.h_net1 = InitStageG(ngf, z_dim, ncf, base_size)
        self.img_net1 = GetImageG(ngf)
        if branch_num > 1:
            self.h_net2 = NextStageG(ngf, nef, base_size, r_num, mask_layout)
            self.img_net2 = GetImageG(ngf)
        if branch_num > 2:
            self.h_net3 = NextStageG(ngf, nef, base_size * 2, r_num, mask_layout)
            self.img_net3 = GetImageG(ngf)

    @property
    def sizes(self) -> list[int]:
        return [self.base_size * 2**i for i in range(self.branch_num)]

    def forward(self, z: torch.Tensor, sentence: torch.Tensor, words: torch.Tensor, mask: torch.Tensor | None,
                eps: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
        c_code, mu, logvar = self.ca_net(sentence, eps)
        h = self.h_net1(z, c_code)
        images, maps = [self.img_net1(h)], []
        if self.branch_num > 1:
            h, att = self.h_net2(h, words, mask)
            images.append(self.img_net2(h))
            maps.append(att)
        if self.branch_num > 2:
            h, att = self.h_net3(h, words, mask)
            images.append(self.img_net3(h))
            maps.append(att)
        return images, maps, mu, logvar


class SpectralNorm(nn.Module):
    """The reference's spectral normalisation (``code/spectral.py``) as a weight parametrisation.

    One power iteration per forward in training mode, in the reference's order: v = W^T u / |.|,
    then u = W v / |.|, sigma = u . W v; u and v start as normalised Gaussian vectors. (torch's
    ``spectral_norm`` updates u before v and runs 15 iterations at creation, so it is not the same
    function.) The reference also iterates in eval mode; here eval leaves u and v alone.
    """

    def __init__(self, weight: torch.Tensor, eps: float = 1e-12) -> None:
        super().__init__()
        height = weight.shape[0]
        width = weight.reshape(height, -1).shape[1]
        self.eps = eps
        self.register_buffer("_u", self._l2(weight.new_empty(height).normal_(0, 1)))
        self.register_buffer("_v", self._l2(weight.new_empty(width).normal_(0, 1)))

    def _l2(self, x: torch.Tensor) -> torch.Tensor:
        return x / (x.norm() + self.eps)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        w = weight.reshape(weight.shape[0], -1)
        if self.training:
            with torch.no_grad():
                self._v.copy_(self._l2(torch.mv(w.t(), self._u)))
                self._u.copy_(self._l2(torch.mv(w, self._v)))
        sigma = torch.dot(self._u.clone(), torch.mv(w, self._v.clone()))
        return weight / sigma

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value


def _sn(layer: nn.Module) -> nn.Module:
    parametrize.register_parametrization(layer, "weight", SpectralNorm(layer.weight.detach()))
    return layer


def block3x3_leaky(in_planes: int, out_planes: int) -> nn.Sequential:
    """Reference ``Block3x3_leakRelu``: spectral-normalised conv3x3 (bias) + LeakyReLU(0.2)."""
    return nn.Sequential(_sn(conv3x3(in_planes, out_planes, bias=True)), nn.LeakyReLU(0.2, inplace=True))


def down_block(in_planes: int, out_planes: int) -> nn.Sequential:
    """Reference ``downBlock``: spectral-normalised 4x4 stride-2 conv + LeakyReLU(0.2)."""
    return nn.Sequential(_sn(nn.Conv2d(in_planes, out_planes, 4, 2, 1, bias=True)), nn.LeakyReLU(0.2, inplace=True))


def encode_image(ndf: int, base_size: int = 64) -> nn.Sequential:
    """Reference ``encode_image_by_16times`` (base 64): stride-2 convs down to 4x4, ending at 8*ndf channels."""
    steps = _log2_steps(base_size)
    layers: list[nn.Module] = []
    in_ch = 3
    for i in range(steps):
        out_ch = ndf * 2 ** (i + 4 - steps)
        layers += [_sn(nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=True)), nn.LeakyReLU(0.2, inplace=True)]
        in_ch = out_ch
    return nn.Sequential(*layers)


class DGetLogits(nn.Module):
    """Reference ``D_GET_LOGITS``: optional joint conv with the sentence, then a 4x4 conv to one logit.

    Returns logits (the reference's sigmoid is folded into the loss, see losses.py).
    """

    def __init__(self, ndf: int, nef: int, bcondition: bool = False) -> None:
        super().__init__()
        self.df_dim, self.ef_dim, self.bcondition = ndf, nef, bcondition
        if bcondition:
            self.jointConv = block3x3_leaky(ndf * 8 + nef, ndf * 8)
        self.outlogits = nn.Sequential(nn.Conv2d(ndf * 8, 1, kernel_size=4, stride=4))

    def forward(self, h_code: torch.Tensor, c_code: torch.Tensor | None = None) -> torch.Tensor:
        if self.bcondition and c_code is not None:
            c = c_code.view(-1, self.ef_dim, 1, 1).repeat(1, 1, 4, 4)
            h_code = self.jointConv(torch.cat((h_code, c), 1))
        return self.outlogits(h_code).view(-1)


class DmganDiscriminator(nn.Module):
    """``D_NET64`` (stage 0), ``D_NET128`` (stage 1) or ``D_NET256`` (stage 2) for images of base_size * 2**stage."""

    def __init__(self, stage: int, ndf: int = 32, nef: int = 256, base_size: int = 64, b_jcu: bool = True) -> None:
        super().__init__()
        if stage not in (0, 1, 2):
            raise ValueError(f"stage must be 0, 1 or 2, got {stage}")
        self.stage = stage
        self.img_code_s16 = encode_image(ndf, base_size)
        if stage == 1:
            self.img_code_s32 = down_block(ndf * 8, ndf * 16)
            self.img_code_s32_1 = block3x3_leaky(ndf * 16, ndf * 8)
        elif stage == 2:
            self.img_code_s32 = down_block(ndf * 8, ndf * 16)
            self.img_code_s64 = down_block(ndf * 16, ndf * 32)
            self.img_code_s64_1 = block3x3_leaky(ndf * 32, ndf * 16)
            self.img_code_s64_2 = block3x3_leaky(ndf * 16, ndf * 8)
        self.UNCOND_DNET = DGetLogits(ndf, nef, bcondition=False) if b_jcu else None
        self.COND_DNET = DGetLogits(ndf, nef, bcondition=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.img_code_s16(x)
        if self.stage == 1:
            x = self.img_code_s32_1(self.img_code_s32(x))
        elif self.stage == 2:
            x = self.img_code_s64_2(self.img_code_s64_1(self.img_code_s64(self.img_code_s32(x))))
        return x


def init_weights(module: nn.Module) -> None:
    """DM-GAN's ``weights_init``: orthogonal conv / linear weights (gain 1), BN weight ~ N(1, 0.02), zero biases.

    Apply with ``net.apply(init_weights)``. Spectral-normalised convs get their original weight initialised.
    """
    name = module.__class__.__name__
    if name.find("Conv") != -1:
        weight = getattr(getattr(module, "parametrizations", None), "weight", None)
        target = weight.original if weight is not None else module.weight
        nn.init.orthogonal_(target.data, 1.0)
    elif name.find("BatchNorm") != -1:
        module.weight.data.normal_(1.0, 0.02)
        module.bias.data.fill_(0)
    elif name.find("Linear") != -1:
        nn.init.orthogonal_(module.weight.data, 1.0)
        if module.bias is not None:
            module.bias.data.fill_(0.0)
