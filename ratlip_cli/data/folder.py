"""Any folder of images with same-stem `.txt` caption files, with an optional split file."""

from __future__ import annotations

import os
from pathlib import Path

from ratlip_cli.data.raw import (
    IMAGE_EXTENSIONS,
    SPLITS,
    RawItem,
    ScanNotes,
    ScanResult,
    hash_split,
    read_captions,
    require,
    strip_image_suffix,
)
from ratlip_cli.errors import RatlipError

EXPECTED = "images (any depth) each with a same-stem .txt caption file next to it, e.g. a/b.jpg + a/b.txt"
TEST_PERCENT = 10  # without --split-file: 90 / 10 by CRC-32 of the key


def read_split_file(path: Path) -> dict[str, str]:
    """`<relative path or key> <split>` per line (space, tab or comma separated; `#` comments)."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise RatlipError(f"cannot read split file {path}: {exc.strerror}") from None
    split_of = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").replace("\t", " ").rsplit(" ", 1)
        if len(parts) != 2 or parts[1].strip().lower() not in SPLITS:
            raise RatlipError(
                f"split file {path} line {n}: expected '<image path> <{'|'.join(SPLITS)}>', got '{line}'"
            )
        split_of[strip_image_suffix(parts[0].strip().replace("\\", "/"))] = parts[1].strip().lower()
    return split_of


def scan(src: Path, split_file: Path | None = None, exclude: Path | None = None) -> ScanResult:
    """Find every image below `src` with a caption file; `exclude` (e.g. the output folder) is skipped."""
    src = Path(src)
    require(src, "folder", EXPECTED, [])
    notes = ScanNotes()
    split_of = read_split_file(split_file) if split_file else None
    skip = Path(exclude).resolve() if exclude else None
    images: dict[str, Path] = {}
    texts: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        if skip is not None and (here.resolve() == skip or skip in here.resolve().parents):
            dirnames[:] = []
            continue
        dirnames.sort()
        for name in sorted(filenames):
            path = here / name
            key = path.relative_to(src).with_suffix("").as_posix()
            suffix = path.suffix.lower()
            if suffix == ".txt":
                texts[key] = path
            elif suffix in IMAGE_EXTENSIONS:
                if key in images:
                    notes.duplicate_keys.append(path.relative_to(src).as_posix())
                else:
                    images[key] = path
    items: list[RawItem] = []
    for key in sorted(images):
        rel = images[key].relative_to(src).as_posix()
        if key not in texts:
            notes.images_without_captions.append(rel)
            continue
        if split_of is not None:
            if key not in split_of:
                notes.not_in_split.append(rel)
                continue
            split = split_of[key]
        else:
            split = hash_split(key, TEST_PERCENT)
        captions = read_captions(texts[key], notes, f"{key}.txt")
        if not captions:
            notes.empty_caption_files.append(f"{key}.txt")
            continue
        items.append(RawItem(key=key, split=split, captions=captions, src=images[key]))
    for key in sorted(set(texts) - set(images)):
        notes.captions_without_images.append(f"{key}.txt")
    if split_of is not None:
        for key in sorted(set(split_of) - set(images)):
            notes.captions_without_images.append(f"{key} (in the split file, no image)")
    if split_file:
        source = f"split file {split_file}"
    else:
        source = f"CRC-32 of the key, {TEST_PERCENT}% test"
    return ScanResult(items, notes, split_source=source)
