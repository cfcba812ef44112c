"""The training/evaluation dataset over a prepared dataset: image + one random caption, tokenised for CLIP."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ratlip_cli.config import DataConfig
from ratlip_cli.data.prepared import PreparedDataset, resize_shorter
from ratlip_cli.data.split import load_rgb, read_split
from ratlip_cli.console import warn
from ratlip_cli.errors import RatlipError

# What a damaged image file raises (PIL: UnidentifiedImageError is an OSError; broken PNG chunks
# raise SyntaxError; a truncated JPEG an OSError; a huge garbage header DecompressionBombError).
UNREADABLE: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError)
MAX_SKIPS = 32
SKIP_SEP = "\x1f"


def resize_shorter_side(img, size: int):
    """Resize so the shorter side is `size`, aspect kept (bicubic); unchanged when it already is."""
    return resize_shorter(img, size, "bicubic")


def center_crop(img, size: int):
    """The central size x size square."""
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_tensor(img, uint8: bool = False) -> torch.Tensor:
    """PIL RGB or (H, W, 3) uint8 array -> (3, H, W) float in [-1, 1], or with `uint8` the pixels as
    they are (`to_model_range` turns them into the same floats later, on the training device)."""
    arr = np.asarray(img, dtype=np.uint8)
    if uint8:
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return to_model_range(torch.from_numpy(arr.copy()).permute(2, 0, 1))


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1] (x / 127.5 - 1, on the tensor's own device); floats pass through.

    Training loaders hand uint8 batches over (4x fewer bytes between processes and to the GPU); the
    training step converts them here, with exactly the operations `to_tensor` uses, so the images the
    networks see are bit-identical either way."""
    if images.dtype != torch.uint8:
        return images
    return images.float().div_(127.5).sub_(1.0)


def augment(img, load_size: int, crop_size: int, flip: bool, rng: np.random.Generator | None,
            uint8: bool = False) -> torch.Tensor:
    """The one image pipeline of every training dataset: shorter side to `load_size`, then with `rng` a
    random `crop_size` crop and (when `flip`) a horizontal flip with probability 0.5, without it a
    centre crop; a (3, crop, crop) tensor in [-1, 1] (uint8 pixels with `uint8`).

    `img` is a PIL image or an (H, W, 3) uint8 array (decoded pixels, `data/decoded.py`): crop and
    flip are array slices either way, so both give the same pixels."""
    if isinstance(img, np.ndarray) and min(img.shape[:2]) != load_size:
        from PIL import Image

        img = Image.fromarray(img)
    if not isinstance(img, np.ndarray):
        img = np.asarray(resize_shorter_side(img, load_size), dtype=np.uint8)
    h, w = img.shape[:2]
    if rng is None:
        left, top = (w - crop_size) // 2, (h - crop_size) // 2
    else:
        left = int(rng.integers(w - crop_size + 1))
        top = int(rng.integers(h - crop_size + 1))
    img = img[top : top + crop_size, left : left + crop_size]
    if rng is not None and flip and rng.random() < 0.5:
        img = img[:, ::-1]
    return to_tensor(img, uint8)


def eval_image(path: str | Path, load_size: int, crop_size: int) -> torch.Tensor:
    """An image as the dataset gives it when not training: resize to load_size, centre crop crop_size."""
    return to_tensor(center_crop(resize_shorter_side(load_rgb(path), load_size), crop_size))


class TextImageDataset(Dataset):
    """Items `{image: (3, crop, crop) float in [-1, 1], tokens: (L,) long, caption: str, index: int}`;
    with uint8=True (training) the image is its uint8 pixels, for `to_model_range` on the device;
    with decoded=True (training) images are cropped from the dataset's decoded copy when it has a
    current one (`ratlip prepare ... --decoded`), with the same pixels as from the files.

    train=True: resize the shorter side to `data_cfg.load_size`, random crop `crop_size`, horizontal
    flip when `data_cfg.flip`; train=False: the same resize and a centre crop. Each item draws one of
    its image's captions (and its crop and flip) from a generator seeded by (seed, epoch, index), so
    items are deterministic, independent of workers and of access order; call `set_epoch(e)` to draw
    new ones. Images are opened per item (no shared file handles), so DataLoader workers are safe.

    skip_unreadable=True (training): an image that cannot be read (deleted, truncated, corrupt since
    `prepare`) is skipped: the item is the next readable image of the split, with its own caption, and
    ``item["unreadable"]`` lists what was skipped (for `UnreadableImages`).
    """

    def __init__(
        self,
        root: str | Path | PreparedDataset,
        split: str,
        data_cfg: DataConfig,
        tokenizer: Callable[[list[str]], torch.Tensor],
        train: bool,
        seed: int = 0,
        skip_unreadable: bool = False,
        uint8: bool = False,
        decoded: bool = False,
    ) -> None:
        if isinstance(root, (str, Path)):
            from ratlip_cli.data.shards import open_dataset

            root = open_dataset(root)
        self.prepared = root  # a PreparedDataset or a ShardSet (local shards), read through `read_split`
        if data_cfg.crop_size > data_cfg.load_size:
            raise RatlipError(
                f"data.crop_size ({data_cfg.crop_size}) must not exceed data.load_size ({data_cfg.load_size})"
            )
        if seed < 0:
            raise RatlipError(f"the dataset seed must be >= 0, got {seed}")
        part = read_split(self.prepared, split, require_files=not skip_unreadable)
        self.split = split
        self.keys: list[str] = part.keys
        self.paths: list[Any] = part.paths  # a Path, or a TarMember for tar shards
        self.captions: list[list[str]] = part.captions
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
        self.skip_unreadable = skip_unreadable
        self.uint8 = uint8
        self.decoded = None
        if decoded and isinstance(self.prepared, PreparedDataset):  # crop from its decoded copy when current
            from ratlip_cli.data.decoded import open_decoded

            self.decoded = open_decoded(self.prepared)

    def _name(self, index: int) -> str:
        """Image `index` as a user finds it: its path under the dataset, or its key in a shard."""
        path = self.paths[index]
        if isinstance(path, Path):
            return path.relative_to(self.prepared.root).as_posix()
        return f"{self.keys[index]} in {Path(path.path).name}"

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
        """Image `index` as a (3, crop, crop) tensor in [-1, 1], or uint8 pixels when the dataset hands
        uint8 over (augmented with `rng` when training)."""
        pixels = self.decoded.get(self.keys[index]) if self.decoded is not None else None
        return augment(load_rgb(self.paths[index]) if pixels is None else pixels, self.load_size, self.crop_size,
                       self.flip, rng if self.train else None, self.uint8)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.keys):
            raise IndexError(index)
        skipped: list[str] = []
        for j in [index] if not self.skip_unreadable else [(index + k) % len(self.keys) for k in range(MAX_SKIPS + 1)]:
            rng = self.rng(j)
            captions = self.captions[j]
            caption = captions[int(rng.integers(len(captions)))]
            try:
                image = self.load_image(j, rng)
            except UNREADABLE as exc:
                if not self.skip_unreadable:
                    raise
                reason = " ".join(str(exc).split()) or type(exc).__name__
                skipped.append(f"{self._name(j)} ({reason})")
                continue
            tokens = self.tokenizer([caption])[0].long()
            item = {"image": image, "tokens": tokens, "caption": caption, "index": j}
            if self.skip_unreadable:
                item["unreadable"] = SKIP_SEP.join(skipped)
            return item
        raise RatlipError(
            f"{len(skipped)} prepared images in a row could not be read (e.g. {skipped[0]}); "
            f"the dataset at {self.prepared.root} is damaged: prepare it again"
        )


class UnreadableImages:
    """Distinct prepared images a training run could not read: one warning each, a stop past ``limit``.

    Fed with every batch of a `TextImageDataset(skip_unreadable=True)`; its count goes to
    metrics.csv (column ``unreadable``) and its list into checkpoints.
    """

    def __init__(self, limit: int, root: str | Path) -> None:
        self.limit = int(limit)
        self.root = Path(root)
        self.seen: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.seen)

    def note(self, batch: dict[str, Any]) -> None:
        """Warn about newly unreadable images in ``batch``; RatlipError once more than ``limit`` are."""
        for text in batch.get("unreadable", []):
            for entry in filter(None, text.split(SKIP_SEP)):
                rel, _, reason = entry.partition(" (")
                if rel in self.seen:
                    continue
                self.seen[rel] = reason.rstrip(")")
                warn(f"skipping unreadable training image {self.root / rel}: {self.seen[rel]}")
        if len(self.seen) > self.limit:
            first = next(iter(self.seen))
            raise RatlipError(
                f"{len(self.seen)} training images could not be read (more than train.max_unreadable={self.limit}; "
                f"first: {self.root / first}); the dataset at {self.root} is damaged: prepare it again, "
                "then resume the run"
            )

    def state(self) -> list[str]:
        """The unreadable images so far (paths relative to the dataset), for a checkpoint."""
        return sorted(self.seen)

    def load(self, keys: list[str]) -> None:
        """Restore `state()` from a checkpoint (no warnings again for these)."""
        self.seen = {k: "seen before the resume" for k in keys}
