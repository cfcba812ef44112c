"""The word vocabulary of a DAMSM text encoder, built from a prepared dataset's training captions.

AttnGAN tokenises with nltk's ``RegexpTokenizer(r'\\w+')`` on lower-cased captions, index 0 is
``<end>`` (also the padding) and captions are cut to ``TEXT.WORDS_NUM`` (18) words. Here:
the same ``\\w+`` rule, 0 = ``<end>``/padding, 1 = ``<unk>`` for words never seen in training
(AttnGAN builds its vocabulary from train and test captions, so it never meets an unknown word;
building it from training captions only keeps the test split unseen), and a caption longer than
``words_num`` keeps its first ``words_num`` words (AttnGAN keeps a random sorted subset during
training; a fixed rule keeps encodings deterministic).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from ratlip_cli.errors import RatlipError

PAD, UNK = 0, 1
SPECIALS = ("<end>", "<unk>")
_WORD = re.compile(r"\w+")


def words_of(caption: str) -> list[str]:
    """The caption's words: lower-cased ``\\w+`` runs (AttnGAN's tokenizer)."""
    return _WORD.findall(caption.lower())


class Vocabulary:
    """Word <-> index table plus the fixed caption length; callable like a tokenizer."""

    def __init__(self, words: Sequence[str], words_num: int) -> None:
        if words_num < 1:
            raise RatlipError(f"the caption length (words_num) must be at least 1, got {words_num}")
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise RatlipError("a vocabulary must start with <end> and <unk>")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.words_num = int(words_num)
        self.context_length = self.words_num

    @classmethod
    def build(cls, captions: Iterable[str], words_num: int, min_count: int = 1) -> Vocabulary:
        """Every word seen at least ``min_count`` times in ``captions``, most frequent first (ties: alphabetical)."""
        counts = Counter(w for c in captions for w in words_of(c))
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        if not kept:
            raise RatlipError("the training captions hold no words; cannot build a vocabulary")
        return cls([*SPECIALS, *kept], words_num)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, caption: str) -> list[int]:
        """Word indices of ``caption`` (unknown words -> <unk>), cut to ``words_num``, at least one index."""
        ids = [self.index.get(w, UNK) for w in words_of(caption)][: self.words_num]
        return ids or [UNK]

    def __call__(self, captions: Sequence[str] | str, context_length: int | None = None) -> torch.Tensor:
        """(B, words_num) long tensor of indices padded with 0 (the dataset's tokenizer interface)."""
        if isinstance(captions, str):
            captions = [captions]
        out = torch.zeros(len(captions), self.words_num, dtype=torch.long)
        for i, c in enumerate(captions):
            ids = self.encode(c)
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """The words of ``ids`` up to the first padding index."""
        out = []
        for i in ids:
            if int(i) == PAD:
                break
            out.append(self.words[int(i)])
        return " ".join(out)

    def to_dict(self) -> dict[str, Any]:
        """Plain data stored inside the text encoder's checkpoint and export."""
        return {"words": list(self.words), "words_num": self.words_num}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        """Rebuild from `to_dict`'s output."""
        try:
            return cls(list(data["words"]), int(data["words_num"]))
        except (KeyError, TypeError, ValueError):
            raise RatlipError("the stored vocabulary is malformed (expected words and words_num)") from None


def caption_lengths(tokens: torch.Tensor) -> torch.Tensor:
    """Number of non-padding indices per row of (B, L) tokens (at least 1)."""
    return (tokens != PAD).sum(1).clamp(min=1)
