"""The training/evaluation dataset over a prepared dataset: image + one random caption, tokenised for CLIP."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ratlip_cli.config import DataConfig
from ratlip_cli.data.prepared import PreparedDataset, load_prepared
from ratlip_cli.errors import RatlipError


def load_rgb(path: str | Path):
    """Open an image fully into memory as RGB (the file is closed before returning)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def resize_shorter_side(img, size: int):
    """Resize so the shorter side is `size`, aspect kept (bicubic); unchanged when it already is."""
    from PIL import Image

    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    new = (size, max(size, round(h * scale))) if w <= h else (max(size, round(w * scale)), size)
    return img.resize(new, Image.Resampling.BICUBIC)


def center_crop(img, size: int):
    """The central size x size square."""
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_tensor(img) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float in [-1, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def augment(img, load_size: int, crop_size: int, flip: bool, rng: np.random.Generator | None) -> torch.Tensor:
    """The one image pipeline of every training dataset: shorter side to `load_size`, then with `rng` a
    random `crop_size` crop and (when `flip`) a horizontal flip with probability 0.5, without it a
    centre crop; a (3, crop, crop) tensor in [-1, 1]."""
    img = resize_shorter_side(img, load_size)
    if rng is None:
        return to_tensor(center_crop(img, crop_size))
    w, h = img.size
    left = int(rng.integers(w - crop_size + 1))
    top = int(rng.integers(h - crop_size + 1))
    img = img.crop((left, top, left + crop_size, top + crop_size))
    if flip and rng.random() < 0.5:
        from PIL import Image

        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_tensor(img)


def eval_image(path: str | Path, load_size: int, crop_size: int) -> torch.Tensor:
    """An image as the dataset gives it when not training: resize to load_size, centre crop crop_size."""
    return to_tensor(center_crop(resize_shorter_side(load_rgb(path), load_size), crop_size))


class TextImageDataset(Dataset):
    """Items `{image: (3, crop, crop) float in [-1, 1], tokens: (L,) long, caption: str, index: int}`.

    train=True: resize the shorter side to `data_cfg.load_size`, random crop `crop_size`, horizontal
    flip when `data_cfg.flip`; train=False: the same resize and a centre crop. Each item draws one of
    its image's captions (and its crop and flip) from a generator seeded by (seed, epoch, index), so
    items are deterministic, independent of workers and of access order; call `set_epoch(e)` to draw
    new ones. Images are opened per item (no shared file handles), so DataLoader workers are safe.
    """

    def __init__(
        self,
        root: str | Path | PreparedDataset,
        split: str,
        data_cfg: DataConfig,
        tokenizer: Callable[[list[str]], torch.Tensor],
        train: bool,
        seed: int = 0,
    ) -> None:
        self.prepared = root if isinstance(root, PreparedDataset) else load_prepared(root)
        if data_cfg.crop_size > data_cfg.load_size:
            raise RatlipError(
                f"data.crop_size ({data_cfg.crop_size}) must not exceed data.load_size ({data_cfg.load_size})"
            )
        if seed < 0:
            raise RatlipError(f"the dataset seed must be >= 0, got {seed}")
        rows = self.prepared.split_images(split)
        by_key = self.prepared.captions_by_key()
        self.split = split
        self.keys: list[str] = rows["key"].tolist()
        self.paths: list[Path] = [self.prepared.root / p for p in rows["path"]]
        self.captions: list[list[str]] = [by_key.get(k, []) for k in self.keys]
        missing = [k for k, c in zip(self.keys, self.captions) if not c]
        if missing:
            raise RatlipError(f"{len(missing)} images of split '{split}' have no caption (e.g. {missing[0]})")
        self.load_size = data_cfg.load_size
        self.crop_size = data_cfg.crop_size
        self.flip = data_cfg.flip
        self.tokenizer = tokenizer
        self.train = train
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose which captions, crops and flips the items of this epoch get."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.keys)

    def rng(self, index: int) -> np.random.Generator:
        """The item's generator, a function of (seed, epoch, index) only."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def caption_index(self, index: int) -> int:
        """Which of image `index`'s captions this epoch uses."""
        return int(self.rng(index).integers(len(self.captions[index])))

    def load_image(self, index: int, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Image `index` as a (3, crop, crop) tensor in [-1, 1] (augmented with `rng` when training)."""
        return augment(load_rgb(self.paths[index]), self.load_size, self.crop_size, self.flip,
                       rng if self.train else None)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.keys):
            raise IndexError(index)
        rng = self.rng(index)
        captions = self.captions[index]
        caption = captions[int(rng.integers(len(captions)))]
        image = self.load_image(index, rng)
        tokens = self.tokenizer([caption])[0].long()
        return {"image": image, "tokens": tokens, "caption": caption, "index": index}
