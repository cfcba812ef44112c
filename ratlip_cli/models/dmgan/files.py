"""The saved DAMSM encoders: ``text_encoder.safetensors``, ``image_encoder.safetensors`` and ``damsm.json``.

``damsm.json`` holds the format, the vocabulary, the encoder settings (the ``damsm`` config
section), the dataset name, the step and the held-out metrics. The image encoder file holds
only its trained weights: the frozen Inception trunk comes from the offline Inception file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ratlip_cli import __version__
from ratlip_cli.config import DamsmConfig
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import write_bytes
from ratlip_cli.models.dmgan.damsm import ImageEncoder, SmallCNNTrunk, TextEncoder
from ratlip_cli.models.dmgan.vocab import Vocabulary

FORMAT = "ratlip-damsm"
FORMAT_VERSION = 1
JSON_FILE = "damsm.json"
TEXT_FILE = "text_encoder.safetensors"
IMAGE_FILE = "image_encoder.safetensors"
# damsm.* keys that change the encoders' weights' shapes or meaning (the rest are training budget).
ARCHITECTURE_KEYS = ("embedding_dim", "word_dim", "dropout", "words_num", "image_encoder", "cnn_width")


def image_trunk(dcfg: DamsmConfig) -> nn.Module:
    """The image encoder's trunk: the frozen offline Inception-v3, or a fresh small CNN."""
    if dcfg.image_encoder == "cnn":
        return SmallCNNTrunk(dcfg.cnn_width)
    from ratlip_cli.metrics.inception import InceptionEncoder
    from ratlip_cli.models.dmgan.damsm import InceptionTrunk

    return InceptionTrunk(InceptionEncoder())


def build_encoders(dcfg: DamsmConfig, vocab: Vocabulary, trunk: nn.Module) -> tuple[TextEncoder, ImageEncoder]:
    """Fresh encoders (random weights from the global torch RNG) for ``vocab``."""
    text = TextEncoder(len(vocab), ninput=dcfg.word_dim, drop_prob=dcfg.dropout, nhidden=dcfg.embedding_dim)
    return text, ImageEncoder(trunk, nef=dcfg.embedding_dim)


def image_state(image: ImageEncoder, kind: str) -> dict[str, torch.Tensor]:
    """The image encoder's own weights: everything but a frozen Inception trunk."""
    return {k: v for k, v in image.state_dict().items() if kind == "cnn" or not k.startswith("trunk.")}


def load_image_state(image: ImageEncoder, state: dict[str, torch.Tensor], kind: str) -> None:
    """Load `image_state`'s output (strict about every key it should hold)."""
    expected = set(image_state(image, kind))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise RatlipError(f"image encoder weights do not fit (missing {missing[:3]}, unexpected {extra[:3]})")
    image.load_state_dict(state, strict=False)


def damsm_section(dcfg: DamsmConfig) -> dict[str, Any]:
    return {f.name: getattr(dcfg, f.name) for f in fields(dcfg)}


def save_encoders(folder: str | Path, vocab: Vocabulary, text: TextEncoder, image: ImageEncoder, dcfg: DamsmConfig,
                  dataset: str, step: int, metrics: dict[str, Any]) -> Path:
    """Write the three files (each atomically, the JSON last); returns the JSON path."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "step": str(int(step))}
    for name, state in ((TEXT_FILE, text.state_dict()), (IMAGE_FILE, image_state(image, dcfg.image_encoder))):
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
        write_bytes(folder / name, save(tensors, metadata=meta))
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "ratlip_version": __version__, "step": int(step),
           "dataset": dataset, "damsm": damsm_section(dcfg), "vocabulary": vocab.to_dict(), "metrics": metrics}
    path = folder / JSON_FILE
    write_bytes(path, (json.dumps(doc, indent=1) + "\n").encode())
    return path


@dataclass
class DamsmEncoders:
    """Loaded, frozen DAMSM encoders in eval mode."""

    vocab: Vocabulary
    text: TextEncoder
    image: ImageEncoder
    dcfg: DamsmConfig
    doc: dict[str, Any]
    path: Path

    @torch.no_grad()
    def encode_text(self, captions: list[str], device: torch.device | str = "cpu"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(word features (B, D, T), sentence (B, D), tokens (B, words_num)) of ``captions``."""
        from ratlip_cli.models.dmgan.vocab import caption_lengths

        tokens = self.vocab(captions).to(device)
        words, sentence = self.text(tokens, caption_lengths(tokens))
        return words, sentence, tokens


def resolve_encoder_path(path: str | Path) -> Path:
    """damsm.json of a `ratlip pretrain-text` folder (or the JSON itself)."""
    path = Path(path).expanduser()
    doc = path / JSON_FILE if path.is_dir() or not path.suffix else path
    if not doc.is_file():
        raise RatlipError(f"no pretrained DAMSM encoders at {path} (expected {doc}); run `ratlip pretrain-text` first")
    return doc


def load_encoders(path: str | Path, device: torch.device | str = "cpu") -> DamsmEncoders:
    """The encoders saved by `save_encoders`, frozen, in eval mode on ``device``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    doc_path = resolve_encoder_path(path)
    try:
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RatlipError(f"{doc_path} is not readable JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise RatlipError(f"{doc_path} is not a ratlip DAMSM encoder file")
    if int(doc.get("format_version", 0)) > FORMAT_VERSION:
        raise RatlipError(f"{doc_path} was written by a newer ratlip; upgrade ratlip")
    dcfg = DamsmConfig()
    for key, value in (doc.get("damsm") or {}).items():
        if hasattr(dcfg, key):
            setattr(dcfg, key, value)
    vocab = Vocabulary.from_dict(doc.get("vocabulary") or {})
    text, image = build_encoders(dcfg, vocab, image_trunk(dcfg))
    try:
        text.load_state_dict(load_file(str(doc_path.parent / TEXT_FILE)))
        load_image_state(image, load_file(str(doc_path.parent / IMAGE_FILE)), dcfg.image_encoder)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise RatlipError(f"cannot load the DAMSM encoders beside {doc_path}: {reason}") from None
    for m in (text, image):
        m.to(device).eval().requires_grad_(False)
    return DamsmEncoders(vocab, text, image, dcfg, doc, doc_path)
