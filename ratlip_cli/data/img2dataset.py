"""A folder of WebDataset tar shards as img2dataset writes them (`00000.tar`: `<key>.jpg` + `<key>.txt` [+ `.json`])."""

from __future__ import annotations

import tarfile
from pathlib import Path

from ratlip_cli.data.raw import RawItem, ScanNotes, ScanResult, clean_captions, hash_split, require
from ratlip_cli.errors import RatlipError

EXPECTED = "tar files (any depth) holding <key>.jpg|png|webp with <key>.txt captions, as img2dataset writes"
TEST_PERCENT = 10  # default of --test-percent: test when crc32(key) % 100 < 10
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def scan(src: Path, test_percent: int = TEST_PERCENT, exclude: Path | None = None) -> ScanResult:
    """Index every sample of every tar below `src` (headers only; captions are read, images are not).

    Each item's image is the byte range (`member`) of its tar; its key is the sample's key in the
    tar (img2dataset keys are unique across shards); the split is a hash of the key.
    """
    src = Path(src)
    require(src, "webdataset", EXPECTED, [])
    if not 0 <= test_percent <= 100:
        raise RatlipError(f"--test-percent must be between 0 and 100, got {test_percent}")
    skip = Path(exclude).resolve() if exclude else None
    tars = sorted(p for p in src.rglob("*.tar") if skip is None or skip not in p.resolve().parents)
    if not tars:
        raise RatlipError(f"{src} holds no .tar files; the webdataset layout expects {EXPECTED}")
    from ratlip_cli.data.shards import split_member

    notes = ScanNotes()
    items: list[RawItem] = []
    seen: set[str] = set()
    for path in tars:
        rel = path.relative_to(src).as_posix()
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        texts: dict[str, bytes] = {}
        try:
            with tarfile.open(path, mode="r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = split_member(member.name)
                    groups.setdefault(key, {})[ext] = member
                    if ext == "txt":
                        fh = tar.extractfile(member)
                        texts[key] = fh.read() if fh is not None else b""
        except (OSError, tarfile.TarError) as exc:
            notes.info.append(f"{rel}: unreadable tar ({exc}); its samples were skipped")
            continue
        for key, parts in groups.items():
            image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
            label = f"{rel}:{key}"
            if image is None:
                notes.captions_without_images.append(label)
                continue
            if key not in texts:
                notes.images_without_captions.append(label)
                continue
            try:
                text = texts[key].decode("utf-8-sig")
            except UnicodeDecodeError:
                text = texts[key].decode("utf-8", errors="replace")
                notes.non_utf8_caption_files.append(label)
            captions = clean_captions(text.splitlines())
            if not captions:
                notes.empty_caption_files.append(label)
                continue
            if key in seen:
                notes.duplicate_keys.append(label)
                continue
            seen.add(key)
            items.append(RawItem(key=key, split=hash_split(key, test_percent), captions=captions, src=path,
                                 member=(image.offset_data, image.size)))
    return ScanResult(items, notes, split_source=f"CRC-32 of the key, {test_percent}% test")
