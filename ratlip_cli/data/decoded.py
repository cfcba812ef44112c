"""Decoded pixels of a prepared dataset in one memory-mapped file, so the training loader crops
from memory instead of decoding a JPEG or PNG per item (`ratlip prepare ... --decoded`).

`decoded.u8` holds every image's RGB pixels (H, W, 3, uint8) back to back; `decoded.json` holds
each key's offset and size and the sha256 of the manifest they were decoded from. The pixels are
the files' own (no resize), so an item cropped from them is bit-identical to one decoded from the
file; a dataset prepared again (new manifest) makes the copy stale, and it is then ignored with a
warning until `--decoded` writes it again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ratlip_cli.console import warn
from ratlip_cli.data.prepared import MANIFEST, PreparedDataset, load_prepared
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import atomic_write, write_json
from ratlip_cli.progress import progress_bar

PIXELS_FILE = "decoded.u8"
INDEX_FILE = "decoded.json"
FORMAT = "ratlip-decoded"
FORMAT_VERSION = 1


def manifest_sha256(root: Path) -> str:
    """The identity of a prepared dataset's content: the sha256 of its manifest file."""
    return hashlib.sha256((Path(root) / MANIFEST).read_bytes()).hexdigest()


def write_decoded(root: str | Path) -> Path:
    """Decode every image of the prepared dataset at `root` into `decoded.u8` (+ `decoded.json`)."""
    from ratlip_cli.data.split import load_rgb

    prepared = load_prepared(root)
    rows = prepared.images.sort_values("key", kind="stable")
    keys, paths = rows["key"].tolist(), [prepared.root / p for p in rows["path"]]
    entries: dict[str, list[int]] = {}

    def fill(fh) -> None:
        offset = 0
        with progress_bar("decoding images") as bar:
            task = bar.add_task("decoding images", total=len(keys))
            for key, path in zip(keys, paths):
                try:
                    arr = np.asarray(load_rgb(path), dtype=np.uint8)
                except (OSError, ValueError, SyntaxError) as exc:
                    raise RatlipError(f"cannot decode {path} ({exc}); prepare the dataset again") from None
                fh.write(arr.tobytes())
                entries[key] = [offset, int(arr.shape[0]), int(arr.shape[1])]
                offset += arr.nbytes
                bar.advance(task)

    atomic_write(prepared.root / PIXELS_FILE, fill, fsync=False)
    index = {"format": FORMAT, "format_version": FORMAT_VERSION, "manifest_sha256": manifest_sha256(prepared.root),
             "images": entries}
    return write_json(prepared.root / INDEX_FILE, index, indent=None)


class DecodedImages:
    """Read-only access to `decoded.u8`: `get(key)` is the image's (H, W, 3) uint8 array (a view).

    The file is mapped on first use in each process, so DataLoader workers map it themselves.
    """

    def __init__(self, root: Path, index: dict[str, Any]) -> None:
        self.root = Path(root)
        self.entries: dict[str, list[int]] = index["images"]
        self._pixels: Optional[np.memmap] = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pixels": None}  # workers map the file themselves

    def get(self, key: str) -> Optional[np.ndarray]:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if self._pixels is None:
            self._pixels = np.memmap(self.root / PIXELS_FILE, dtype=np.uint8, mode="r")
        offset, h, w = entry
        return self._pixels[offset : offset + h * w * 3].reshape(h, w, 3)


def open_decoded(prepared: PreparedDataset) -> Optional[DecodedImages]:
    """The dataset's decoded copy when there is a current one; None (with a warning if stale) otherwise."""
    index_path, pixels = prepared.root / INDEX_FILE, prepared.root / PIXELS_FILE
    if not index_path.is_file() or not pixels.is_file():
        return None
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        warn(f"{index_path} is unreadable; decoding the image files instead (rerun `ratlip prepare ... --decoded`)")
        return None
    if index.get("format") != FORMAT or index.get("manifest_sha256") != manifest_sha256(prepared.root):
        warn(f"{pixels} was decoded from an earlier preparation of this dataset; decoding the image files "
             "instead (rerun `ratlip prepare ... --decoded` to refresh it)")
        return None
    size = sum(h * w * 3 for _, h, w in index["images"].values())
    if pixels.stat().st_size != size:
        warn(f"{pixels} has {pixels.stat().st_size} bytes, its index says {size}; decoding the image files instead")
        return None
    return DecodedImages(prepared.root, index)
