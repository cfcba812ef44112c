"""One split of a dataset in either format, the one interface every reader of a prepared dataset uses.

`read_split(dataset_or_root, split)` gives the same `DatasetSplit` for the folder format (images.csv,
captions.csv, images/) and for tar shards: image keys sorted, every caption of each image, where each
image lies (a file, or a byte range of a local shard), and a content fingerprint that is equal for
equal content in both formats. In-domain CLIP and DAMSM pretraining, reference statistics, the shapes
checker, sample captions, ablate and eval read datasets through it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ratlip_cli.errors import RatlipError


@dataclass
class DatasetSplit:
    """A split of a dataset: images (sorted by key), all their captions, and a content fingerprint."""

    root: Path
    split: str
    keys: list[str]
    paths: list[Any]  # Path per image; for tar shards a TarMember (a byte range of a shard)
    captions: list[list[str]]
    fingerprint: str
    _pool: tuple[list[str], dict[str, frozenset[int]]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.keys)

    def open_image(self, index: int):
        """Image `index` as a PIL RGB image, read fully (the file is closed on return)."""
        return load_rgb(self.paths[index])

    def all_captions(self) -> list[str]:
        """Every caption of the split, image by image (key order), each image's in caption order."""
        return [t for caps in self.captions for t in caps]

    def first_captions(self, n: int) -> list[str]:
        """The first caption of `n` images evenly spaced over the split (all images when it has <= n)."""
        firsts = [caps[0] for caps in self.captions if caps]
        if len(firsts) <= n:
            return firsts
        return [firsts[int(i * len(firsts) / n)] for i in range(n)]

    def pool(self) -> tuple[list[str], dict[str, frozenset[int]]]:
        """(sorted unique captions, text -> pool indices of every caption of every image having that text).

        R-precision draws its wrong captions from this pool, excluding the true caption and the other
        captions of the same image(s), so a correct description never counts as a wrong one.
        """
        if self._pool is None:
            texts = sorted({t for caps in self.captions for t in caps})
            index = {t: i for i, t in enumerate(texts)}
            excluded: dict[str, set[int]] = {}
            for caps in self.captions:
                ids = {index[t] for t in caps}
                for t in caps:
                    excluded.setdefault(t, set()).update(ids)
            self._pool = (texts, {t: frozenset(v) for t, v in excluded.items()})
        return self._pool


def load_rgb(source: Any):
    """Open an image (a path, or anything with `open()` such as a TarMember) fully into memory as RGB."""
    from PIL import Image

    with Image.open(source.open() if hasattr(source, "offset") else source) as im:
        return im.convert("RGB")


def _digest(split: str, entries: list[tuple[str, int, int]]) -> str:
    """The content fingerprint: (key, image bytes, number of captions) per image, in key order."""
    digest = hashlib.sha1(f"{split}\n".encode())
    for key, size, n_captions in entries:
        digest.update(f"{key}\t{size}\t{n_captions}\n".encode())
    return digest.hexdigest()


def _missing_split(root: Path, split: str, present: list[str]) -> RatlipError:
    return RatlipError(f"split '{split}' is not in the dataset at {root} (splits present: {', '.join(present) or 'none'})")


def _shard_split(ds, split: str) -> DatasetSplit:
    if split not in ds.splits:
        raise _missing_split(ds.root, split, ds.splits)
    rows = sorted(ds.index_split(split), key=lambda r: r[0])
    fingerprint = _digest(split, [(key, member.size, len(caps)) for key, caps, member in rows])
    return DatasetSplit(ds.root, split, [r[0] for r in rows], [r[2] for r in rows], [r[1] for r in rows],
                        fingerprint)


def _prepared_split(ds, split: str, require_files: bool) -> DatasetSplit:
    images = ds.images
    rows = images[images["split"] == split]
    if rows.empty:
        raise _missing_split(ds.root, split, sorted(map(str, images["split"].unique())))
    rows = rows.sort_values("key", kind="stable")
    by_key = ds.captions_by_key()
    keys, paths, captions, entries = [], [], [], []
    for key, path in zip(rows["key"].astype(str), rows["path"].astype(str)):
        full = Path(path) if Path(path).is_absolute() else ds.root / path
        try:
            size = full.stat().st_size
        except OSError:
            if not require_files:  # the reader skips it when it comes to it (training's skip_unreadable)
                size = -1
            else:
                raise RatlipError(
                    f"image of '{key}' missing from the prepared dataset: {full} (re-run `ratlip prepare`)"
                ) from None
        caps = [str(t) for t in by_key.get(key, [])]
        keys.append(key)
        paths.append(full)
        captions.append(caps)
        entries.append((key, size, len(caps)))
    return DatasetSplit(ds.root, split, keys, paths, captions, _digest(split, entries))


def read_split(
    dataset: Any, split: str = "test", shard_url: str = "", fmt: str = "auto", require_files: bool = True
) -> DatasetSplit:
    """`split` of a dataset (an opened PreparedDataset / ShardSet, or the folder holding either format).

    Raises a one-line RatlipError when the split is missing or has no captions at all, and (unless
    `require_files` is False) when an image file of the folder format is missing.
    """
    if isinstance(dataset, (str, Path)):
        from ratlip_cli.data.shards import open_dataset

        dataset = open_dataset(Path(dataset).expanduser(), fmt, shard_url)
    out = _shard_split(dataset, split) if hasattr(dataset, "split_shards") else _prepared_split(dataset, split, require_files)
    if not any(out.captions):
        raise RatlipError(f"the '{split}' split of {out.root} has no captions")
    return out


def dataset_record(split: DatasetSplit) -> dict[str, str]:
    """What an evaluation row records of the data it used: folder, split and content fingerprint."""
    return {"dataset": str(Path(split.root).resolve()), "split": split.split, "fingerprint": split.fingerprint}
