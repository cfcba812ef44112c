"""The frozen CLIP text tower as a family's `TextEncoder`, loaded the way a run needs it.

A run with `clip.weights=random` draws its CLIP from a seed derived from `train.seed` and saves it
as ``clip.safetensors`` in the run folder (rank 0); with `clip.weights=in-domain` it loads the
CLIP pretrained on the dataset (the file `RunFiles.in_domain_clip` gives: the harness builds it on first
use with `ratlip_cli.clip_pretrain`) and saves a copy there, so a resumed run, `ratlip sample` and
`ratlip eval` rebuild exactly the same frozen network; an export records that file relative to
itself (``source["file"]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ratlip_cli.config import Config
from ratlip_cli.errors import RatlipError
from ratlip_cli.models.common.clip_backbone import ClipBackbone
from ratlip_cli.models.family import RunFiles, TextEncoder
from ratlip_cli.seeds import derive_seed
from ratlip_cli.weights import IN_DOMAIN, load_clip, save_clip_weights

CLIP_FILE = "clip.safetensors"


class ClipText(TextEncoder):
    """CLIP's text tower: the condition is the sentence embedding (B, E), in the tower's dtype."""

    def __init__(self, backbone: nn.Module, tokenizer, source: dict[str, Any], clip_model: nn.Module) -> None:
        super().__init__(backbone, tokenizer, getattr(backbone, "context_length", 0)
                         or getattr(tokenizer, "context_length", 0), source)
        self.clip_model = clip_model

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module.encode_text(tokens.to(self.device))[0]

    def around(self, backbone: nn.Module) -> ClipText:
        """The same encoder around another wrapper of the same CLIP model (the one the networks hold)."""
        return ClipText(backbone, self.tokenizer, self.source, self.clip_model)


def _backbone(clip_model: nn.Module) -> nn.Module:
    return ClipBackbone(clip_model)


def run_clip_text(cfg: Config, files: RunFiles, device: torch.device | str = "cpu") -> ClipText:
    """The run's frozen CLIP: pretrained, in-domain or random from a derived seed (the last two
    saved once in the run folder)."""
    source: dict[str, Any] = {"arch": cfg.clip.arch, "weights": cfg.clip.weights, "file": None}
    if cfg.clip.weights not in ("random", IN_DOMAIN):
        clip_model, tokenizer = load_clip(cfg.clip.arch, cfg.clip.weights, cfg.clip.cache_dir)
    elif files.folder is not None and files.resuming:
        path = files.folder / CLIP_FILE
        if not path.is_file():
            raise RatlipError(
                f"{path} is missing: this run used {cfg.clip.weights} CLIP weights saved there, so it cannot continue"
            )
        clip_model, tokenizer = load_clip(cfg.clip.arch, str(path), cfg.clip.cache_dir)
        source["file"] = str(path)
    elif cfg.clip.weights == IN_DOMAIN:
        if files.in_domain_clip is None:
            raise RatlipError("clip.weights=in-domain: this command does not provide the in-domain CLIP; "
                              "`ratlip pretrain-clip` builds it, `ratlip train` uses it")
        clip_model, tokenizer = load_clip(cfg.clip.arch, str(files.in_domain_clip(cfg)), cfg.clip.cache_dir)
        if files.folder is not None:
            path = files.folder / CLIP_FILE
            if files.main:
                save_clip_weights(clip_model, path)
            source["file"] = str(path)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(files.seed, "clip"))
            clip_model, tokenizer = load_clip(cfg.clip.arch, "random", cfg.clip.cache_dir)
        if files.folder is not None:
            path = files.folder / CLIP_FILE
            if files.main:
                save_clip_weights(clip_model, path)
            source["file"] = str(path)
    clip_model = clip_model.to(device)
    return ClipText(_backbone(clip_model), tokenizer, source, clip_model)


def export_clip_source(source: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The ``clip`` entry of an export: the saved random CLIP file is stored relative to ``out_dir``."""
    out = {"arch": source.get("arch"), "weights": source.get("weights"), "file": None}
    if source.get("file"):
        out["file"] = os.path.relpath(Path(source["file"]).resolve(), Path(out_dir).resolve())
    return out


def export_clip_text(source: dict[str, Any], cfg: Config, folder: Path) -> ClipText:
    """Rebuild an export's frozen CLIP from its ``clip`` entry (paths relative to the export folder)."""
    weights = source.get("weights") or cfg.clip.weights
    if source.get("file"):
        file = (folder / source["file"]).resolve()
        if not file.is_file():
            raise RatlipError(
                f"{folder / 'generator.json'} needs the run's frozen CLIP weights {file}, which are missing; "
                "keep the export folder inside its run directory"
            )
        weights = str(file)
    elif weights in ("random", "in-domain"):
        raise RatlipError(f"{folder / 'generator.json'} used {weights} CLIP weights but names no saved CLIP file; "
                          "it cannot be rebuilt")
    clip_model, tokenizer = load_clip(cfg.clip.arch, weights, cfg.clip.cache_dir, device="cpu")
    return ClipText(_backbone(clip_model), tokenizer, source, clip_model)
