"""AttnGAN's DAMSM matching losses (``miscc/losses.py``: func_attention, words_loss, sent_loss).

Shapes: word features ``(B, D, T)``, region features ``(B, D, h, w)``, codes ``(B, D)``.
``exclude`` (optional, ``(B, B)`` bool) marks pairs (i, j), i != j, that must not count as
mismatches; AttnGAN builds it from CUB class ids (same class). Its positions get -inf before
the cross entropy, as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# cfg/DAMSM/bird.yml TRAIN.SMOOTH
GAMMA1, GAMMA2, GAMMA3 = 4.0, 5.0, 10.0


def func_attention(query: torch.Tensor, context: torch.Tensor, gamma1: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Word-to-region attention (AttnGAN Eqs. 7-9): softmax over words, then gamma1-sharpened softmax over regions.

    query (B, D, Q), context (B, D, h, w) -> (weighted context (B, D, Q), attention (B, Q, h, w)).
    """
    b, q = query.shape[0], query.shape[2]
    ih, iw = context.shape[2], context.shape[3]
    ctx = context.reshape(b, -1, ih * iw)
    attn = torch.bmm(ctx.transpose(1, 2), query)  # (B, S, Q)
    attn = F.softmax(attn, dim=2)  # Eq. 8: over the words
    attn = F.softmax(attn.transpose(1, 2) * gamma1, dim=2)  # Eq. 9: over the regions, (B, Q, S)
    weighted = torch.bmm(ctx, attn.transpose(1, 2))
    return weighted, attn.reshape(b, q, ih, iw)


def _cross_entropies(scores: torch.Tensor, exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if exclude is not None:
        scores = scores.masked_fill(exclude, float("-inf"))
    labels = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(scores, labels), F.cross_entropy(scores.t(), labels)


def sent_loss(cnn_code: torch.Tensor, rnn_code: torch.Tensor, exclude: torch.Tensor | None = None,
              gamma3: float = GAMMA3, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentence-level DAMSM loss: gamma3-scaled cosine of every (image, sentence) pair, CE both ways.

    Returns (image -> sentence loss, sentence -> image loss).
    """
    norm = cnn_code.norm(dim=1, keepdim=True) * rnn_code.norm(dim=1, keepdim=True).t()
    scores = cnn_code @ rnn_code.t() / norm.clamp(min=eps) * gamma3
    return _cross_entropies(scores, exclude)


def word_similarities(img_features: torch.Tensor, words_emb: torch.Tensor, cap_lens: torch.Tensor,
                      gamma1: float = GAMMA1, gamma2: float = GAMMA2, eps: float = 1e-8
                      ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(B_img, B_cap) word-level matching scores R(image j, caption i) (AttnGAN Eq. 10) and the
    attention maps of each caption over its own image."""
    b = img_features.shape[0]
    columns, maps = [], []
    for i, n in enumerate(cap_lens.tolist()):
        word = words_emb[i, :, :n].unsqueeze(0).expand(b, -1, -1)
        weighted, attn = func_attention(word, img_features, gamma1)
        maps.append(attn[i : i + 1])
        w12 = (word * weighted).sum(1)
        cos = w12 / (word.norm(dim=1) * weighted.norm(dim=1)).clamp(min=eps)  # (B, n)
        columns.append(torch.log(torch.exp(cos * gamma2).sum(1, keepdim=True)))
    return torch.cat(columns, 1), maps


def words_loss(img_features: torch.Tensor, words_emb: torch.Tensor, cap_lens: torch.Tensor,
               exclude: torch.Tensor | None = None, gamma1: float = GAMMA1, gamma2: float = GAMMA2,
               gamma3: float = GAMMA3) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Word-level DAMSM loss: (image -> caption loss, caption -> image loss, attention maps)."""
    sims, maps = word_similarities(img_features, words_emb, cap_lens, gamma1, gamma2)
    loss0, loss1 = _cross_entropies(sims * gamma3, exclude)
    return loss0, loss1, maps


@dataclass
class DamsmLoss:
    """The four DAMSM terms of one batch (their sum is the pretraining loss)."""

    w0: torch.Tensor
    w1: torch.Tensor
    s0: torch.Tensor
    s1: torch.Tensor

    @property
    def words(self) -> torch.Tensor:
        return self.w0 + self.w1

    @property
    def sentence(self) -> torch.Tensor:
        return self.s0 + self.s1

    @property
    def total(self) -> torch.Tensor:
        return self.words + self.sentence


def damsm_loss(region: torch.Tensor, code: torch.Tensor, words: torch.Tensor, sentence: torch.Tensor,
               cap_lens: torch.Tensor, exclude: torch.Tensor | None = None, gamma1: float = GAMMA1,
               gamma2: float = GAMMA2, gamma3: float = GAMMA3) -> DamsmLoss:
    """words_loss + sent_loss of a batch of matching (image, caption) pairs."""
    w0, w1, _ = words_loss(region, words, cap_lens, exclude, gamma1, gamma2, gamma3)
    s0, s1 = sent_loss(code, sentence, exclude, gamma3)
    return DamsmLoss(w0, w1, s0, s1)


def same_caption_mask(captions: list[str]) -> torch.Tensor:
    """(B, B) bool: True where i != j and the two captions are the same text (not a real mismatch).

    The stand-in for AttnGAN's same-class mask on datasets without class ids.
    """
    b = len(captions)
    m = torch.tensor([[i != j and captions[i] == captions[j] for j in range(b)] for i in range(b)], dtype=torch.bool)
    return m
