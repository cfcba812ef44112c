"""What every raw-layout scanner shares: the item record, the scan notes, caption and split readers."""

from __future__ import annotations

import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ratlip_cli.errors import RatlipError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
SPLITS = ("train", "test", "val")


@dataclass
class RawItem:
    """One image to prepare: where it comes from, its split and its captions.

    `key` is the image's id inside the prepared dataset (a relative POSIX path without extension,
    e.g. `001.Black_footed_Albatross/Black_Footed_Albatross_0046_18`). `bbox` (x, y, w, h) asks for
    the CUB crop; `spec` replaces `src` for generated images (shapes); `member` (offset, size) says
    the image is that byte range of the tar file `src` (img2dataset shards).
    """

    key: str
    split: str
    captions: list[str]
    src: Path | None = None
    bbox: tuple[float, float, float, float] | None = None
    spec: dict[str, Any] | None = None
    member: tuple[int, int] | None = None


def open_source(src: str | Path, member: tuple[int, int] | None = None):
    """A binary file object of an image: the file `src`, or the byte range `member` of the tar `src`."""
    import io

    if member is None:
        return open(src, "rb")
    offset, size = member
    with open(src, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    if len(data) != size:
        raise OSError(f"{src} ends inside the member at byte {offset}")
    return io.BytesIO(data)


@dataclass
class ScanNotes:
    """Problems found while scanning a raw layout; each list is written to report.txt with its count."""

    images_without_captions: list[str] = field(default_factory=list)
    captions_without_images: list[str] = field(default_factory=list)
    empty_caption_files: list[str] = field(default_factory=list)
    non_utf8_caption_files: list[str] = field(default_factory=list)
    not_in_split: list[str] = field(default_factory=list)
    duplicate_keys: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)

    SECTIONS = (
        ("images_without_captions", "images without captions (skipped)"),
        ("captions_without_images", "captions (or split entries) without images (skipped)"),
        ("empty_caption_files", "empty caption files (image skipped)"),
        ("non_utf8_caption_files", "non-UTF-8 caption files (decoded with replacement characters)"),
        ("not_in_split", "images in no split (skipped)"),
        ("duplicate_keys", "duplicate image keys (later files skipped)"),
    )

    def counts(self) -> dict[str, int]:
        """Count per problem kind (the numbers stored in the manifest)."""
        return {name: len(getattr(self, name)) for name, _ in self.SECTIONS}


@dataclass
class ScanResult:
    """The output of a layout scanner: items to write and problems found."""

    items: list[RawItem]
    notes: ScanNotes
    split_source: str = ""


def read_captions(path: Path, notes: ScanNotes, label: str) -> list[str]:
    """Captions of one text file, one per non-empty line, whitespace collapsed.

    Non-UTF-8 bytes are decoded with replacement characters and the file is listed in `notes`.
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        notes.non_utf8_caption_files.append(label)
    return clean_captions(text.splitlines())


def clean_captions(lines: list[str]) -> list[str]:
    """Collapse whitespace and drop empty lines."""
    out = []
    for line in lines:
        line = " ".join(line.split())
        if line:
            out.append(line)
    return out


class _StringListUnpickler(pickle.Unpickler):
    """Unpickles plain containers of strings only: split lists are data, never code."""

    def find_class(self, module: str, name: str):  # noqa: D102
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_split_pickle(path: Path) -> list[str]:
    """A pickled list of keys (StackGAN/DF-GAN `filenames.pickle`, Python 2 or 3)."""
    try:
        with open(path, "rb") as fh:
            data = _StringListUnpickler(fh, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise RatlipError(f"cannot read split list {path}: {exc}") from None
    if isinstance(data, (bytes, str)) or not hasattr(data, "__iter__"):
        raise RatlipError(f"split list {path} is not a list of file names")
    keys = []
    for entry in data:
        if isinstance(entry, bytes):
            entry = entry.decode("utf-8", errors="replace")
        if not isinstance(entry, str):
            raise RatlipError(f"split list {path} is not a list of file names")
        keys.append(entry)
    return keys


def read_key_list(path: Path) -> list[str]:
    """Keys one per line (blank lines and `#` comments ignored)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise RatlipError(f"cannot read split list {path}: {exc.strerror}") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def strip_image_suffix(name: str) -> str:
    """`a/b.jpg` -> `a/b`; names without an image extension are returned unchanged."""
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def hash_split(key: str, test_percent: int) -> str:
    """A split that depends on the key alone (CRC-32 of its UTF-8 bytes), stable when files come and go."""
    return "test" if zlib.crc32(key.encode("utf-8")) % 100 < test_percent else "train"


def require(src: Path, layout: str, expected: str, paths: list[str]) -> None:
    """Raise one line naming the expected layout when `src` or any of `paths` under it is missing."""
    if not src.is_dir():
        raise RatlipError(f"source folder {src} does not exist; the {layout} layout expects {expected}")
    missing = [p for p in paths if not (src / p).exists()]
    if missing:
        raise RatlipError(f"{src} is not a {layout} folder: missing {', '.join(missing)}; expected {expected}")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
