"""The frozen DAMSM encoders of a run as the family's `TextEncoder` (plus the image encoder DM-GAN needs).

The run keeps its own copy of the `ratlip pretrain-text` files in ``runs/NAME/text_encoder/`` (written
once by rank 0), so a resumed run, its export, `ratlip sample` and `ratlip eval` rebuild exactly the
encoders it trained with; an export records that folder relative to itself (``source["dir"]``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ratlip_cli.config import Config
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import write_bytes
from ratlip_cli.models.dmgan.adapter import DamsmTextBackbone
from ratlip_cli.models.family import RunFiles, TextEncoder

ENCODER_DIR = "text_encoder"


class DamsmText(TextEncoder):
    """DAMSM's BiLSTM: the condition packs sentence, word features and padding mask (`adapter.pack_condition`).

    ``encoders`` is the loaded `files.DamsmEncoders` (vocabulary, text and image encoders, settings).
    """

    def __init__(self, encoders, source: dict[str, Any]) -> None:
        backbone = DamsmTextBackbone(encoders.text, encoders.vocab.words_num)
        super().__init__(backbone, encoders.vocab, encoders.vocab.words_num, source)
        self.encoders = encoders

    @property
    def dim(self) -> int:
        return self.module.dim

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module.encode_text(tokens.to(self.device))[0]

    def retrieval_scorer(self) -> DamsmScorer:
        """DAMSM's image and sentence codes, for `ratlip eval`'s DAMSM R-precision."""
        return DamsmScorer(self.encoders)


class DamsmScorer:
    """`embed_images` (uint8 HWC arrays) and `embed_texts` with the DAMSM encoders (AttnGAN's R-precision codes)."""

    name = "DAMSM"

    def __init__(self, encoders) -> None:
        self.encoders = encoders

    @torch.no_grad()
    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        image = self.encoders.image
        device = next(image.parameters()).device
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        return image(x.to(device))[1].float().cpu()

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        from ratlip_cli.models.dmgan.retrieval import encode_sentences

        device = next(self.encoders.text.parameters()).device
        return encode_sentences(self.encoders.text, self.encoders.vocab, list(texts), device)


def encoder_source(cfg: Config) -> Path:
    """The `ratlip pretrain-text` folder this config's DM-GAN takes its encoders from."""
    from ratlip_cli.models.dmgan.pretrain import output_dir

    return Path(cfg.dmgan.text_encoder) if cfg.dmgan.text_encoder else output_dir(cfg)


def copy_encoders(source: Path, dest: Path) -> None:
    """Copy the encoder files into ``dest`` (the JSON last: its presence marks a complete copy)."""
    from ratlip_cli.models.dmgan.files import IMAGE_FILE, JSON_FILE, TEXT_FILE, resolve_encoder_path

    doc = resolve_encoder_path(source)
    dest.mkdir(parents=True, exist_ok=True)
    for name in (TEXT_FILE, IMAGE_FILE, JSON_FILE):
        write_bytes(dest / name, (doc.parent / name).read_bytes())


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_damsm_text(cfg: Config, files: RunFiles, device: torch.device | str = "cpu") -> DamsmText:
    """The run's frozen DAMSM encoders: copied into the run folder at its start, read from there after."""
    from ratlip_cli import dist
    from ratlip_cli.models.dmgan.files import TEXT_FILE, load_encoders, resolve_encoder_path

    if files.folder is None:
        folder = resolve_encoder_path(encoder_source(cfg)).parent
    else:
        folder = files.folder / ENCODER_DIR
        if not files.resuming:
            if files.main:
                copy_encoders(encoder_source(cfg), folder)
            dist.barrier()
        elif not (folder / "damsm.json").is_file():
            raise RatlipError(f"{folder} is missing: this run's DAMSM encoders were copied there, so it cannot continue")
    encoders = load_encoders(folder, device)
    return DamsmText(encoders, {"dir": str(folder), "text_sha256": sha256(folder / TEXT_FILE)})


def export_damsm_source(source: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The export's record of the encoders: the run's copy, relative to the export folder."""
    return {"dir": os.path.relpath(Path(source["dir"]).resolve(), Path(out_dir).resolve()),
            "text_sha256": source.get("text_sha256")}


def export_damsm_text(source: dict[str, Any], cfg: Config, folder: Path) -> DamsmText:
    """Rebuild an export's DAMSM encoders (refusing a text encoder other than the one it was trained with)."""
    from ratlip_cli.models.dmgan.files import TEXT_FILE, load_encoders

    if not source.get("dir"):
        raise RatlipError(f"{folder / 'generator.json'} names no DAMSM encoder folder; it cannot be rebuilt")
    path = (folder / source["dir"]).resolve()
    if not (path / "damsm.json").is_file():
        raise RatlipError(f"{folder / 'generator.json'} needs the run's DAMSM encoders in {path}, which are missing; "
                          "keep the export folder inside its run directory")
    if source.get("text_sha256") and sha256(path / TEXT_FILE) != source["text_sha256"]:
        raise RatlipError(f"the text encoder in {path} is not the one this generator was trained with")
    return DamsmText(load_encoders(path, "cpu"), {"dir": str(path), "text_sha256": source.get("text_sha256")})
