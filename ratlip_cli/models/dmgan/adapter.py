"""DM-GAN behind the shared generator interface: ``generator(z, s)`` and ``backbone.encode_text(tokens)[0]``.

Sampling, evaluation and the training loop's grids call a family's generator with a noise vector
and one conditioning vector per caption. For DM-GAN:

- the conditioning vector packs the DAMSM encoding: ``[sentence (D) | words (D * T) | padding mask (T)]``
  with T = the vocabulary's ``words_num`` (word features zero-padded to T);
- the noise vector is ``[z (z_dim) | eps (condition_dim)]``: eps is the conditioning
  augmentation's N(0, 1) draw, so every image is a function of its own noise vector (batch
  independent in eval mode, reproducible from a seed);
- the output is the last stage's image (``stage`` selects another one).
"""

from __future__ import annotations

import torch
from torch import nn

from ratlip_cli.models.dmgan.damsm import TextEncoder
from ratlip_cli.models.dmgan.networks import DmganGenerator
from ratlip_cli.models.dmgan.vocab import caption_lengths


def pack_condition(sentence: torch.Tensor, words: torch.Tensor, mask: torch.Tensor, words_num: int) -> torch.Tensor:
    """(B, D + D * T + T): sentence, zero-padded word features and the padding mask (1 = padding)."""
    b, d, t = words.shape
    full = words.new_zeros(b, d, words_num)
    full[:, :, :t] = words
    pad = torch.ones(b, words_num, dtype=words.dtype, device=words.device)
    pad[:, :t] = mask[:, :t].to(words.dtype)
    return torch.cat([sentence, full.reshape(b, -1), pad], 1)


def unpack_condition(s: torch.Tensor, dim: int, words_num: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sentence, words (B, D, T'), mask (B, T')) with T' the longest caption in the batch."""
    b = s.shape[0]
    sentence = s[:, :dim]
    words = s[:, dim : dim + dim * words_num].reshape(b, dim, words_num)
    mask = s[:, dim + dim * words_num :] > 0.5
    longest = int((~mask).sum(1).max()) if b else 1
    return sentence, words[:, :, : max(longest, 1)], mask[:, : max(longest, 1)]


class DamsmTextBackbone(nn.Module):
    """The frozen DAMSM text encoder with the backbone interface: ``encode_text(tokens) -> (packed, None)``."""

    def __init__(self, text: TextEncoder, words_num: int) -> None:
        super().__init__()
        self.text = text
        self.words_num = words_num
        self.dim = text.nhidden * text.num_directions
        # The shared prompt check reserves two places for start/end tokens, which this vocabulary lacks.
        self.context_length = words_num + 2

    def encode_text(self, tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
        tokens = tokens[:, : self.words_num]
        words, sentence = self.text(tokens, caption_lengths(tokens))
        mask = tokens[:, : words.shape[2]] == 0
        return pack_condition(sentence, words, mask, self.words_num), None


class DmganImageGenerator(nn.Module):
    """``forward(noise, packed) -> images`` of one stage (default: the last) of a DM-GAN generator."""

    def __init__(self, generator: DmganGenerator, dim: int, words_num: int) -> None:
        super().__init__()
        self.generator = generator
        self.dim, self.words_num = dim, words_num
        self.stage = generator.branch_num - 1

    @property
    def z_dim(self) -> int:
        """Length of one image's noise vector: DM-GAN's z and the conditioning augmentation's eps."""
        return self.generator.z_dim + self.generator.c_dim

    @property
    def stages(self) -> int:
        """How many stages (images of growing size) the generator makes; ``stage`` selects the output."""
        return self.generator.branch_num

    def forward(self, noise: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        z, eps = noise[:, : self.generator.z_dim], noise[:, self.generator.z_dim :]
        sentence, words, mask = unpack_condition(s, self.dim, self.words_num)
        images, _maps, _mu, _logvar = self.generator(z, sentence, words, mask, eps=eps)
        return images[self.stage]
