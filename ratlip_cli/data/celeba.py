"""CelebA-tiny in the Multi-Modal CelebA-HQ layout: `images/<id>.jpg` with captions `text/<id>.txt`."""

from __future__ import annotations

from pathlib import Path

from ratlip_cli.data.raw import (
    RawItem,
    ScanNotes,
    ScanResult,
    hash_split,
    list_images,
    load_split_pickle,
    read_captions,
    read_key_list,
    require,
    strip_image_suffix,
)

EXPECTED = (
    "images/<id>.jpg and text/<id>.txt (optional split lists: train/filenames.pickle + "
    "test/filenames.pickle, or train.txt + test.txt)"
)
TEST_PERCENT = 20  # fallback split: 80 / 20 by CRC-32 of the id (Multi-Modal CelebA-HQ uses 24k / 6k)


def _split_lists(src: Path) -> tuple[str, dict[str, str] | None]:
    for source, reader in (
        (("train/filenames.pickle", "test/filenames.pickle"), load_split_pickle),
        (("train.txt", "test.txt"), read_key_list),
    ):
        if all((src / name).is_file() for name in source):
            split_of = {}
            for split, name in zip(("train", "test"), source):
                for entry in reader(src / name):
                    split_of[Path(strip_image_suffix(entry)).name] = split
            return ", ".join(source), split_of
    return f"fallback: CRC-32 of the id, {TEST_PERCENT}% test", None


def scan(src: Path) -> ScanResult:
    """Find CelebA-tiny images and captions and the train/test split."""
    src = Path(src)
    require(src, "CelebA-tiny (Multi-Modal CelebA-HQ)", EXPECTED, ["images", "text"])
    notes = ScanNotes()
    split_source, split_of = _split_lists(src)
    images = {}
    for path in list_images(src / "images"):
        if path.stem in images:
            notes.duplicate_keys.append(f"images/{path.name}")
            continue
        images[path.stem] = path
    caption_files = {p.stem: p for p in sorted((src / "text").glob("*.txt"))}

    items: list[RawItem] = []
    for key in sorted(images):
        if key not in caption_files:
            notes.images_without_captions.append(f"images/{images[key].name}")
            continue
        if split_of is not None:
            if key not in split_of:
                notes.not_in_split.append(key)
                continue
            split = split_of[key]
        else:
            split = hash_split(key, TEST_PERCENT)
        captions = read_captions(caption_files[key], notes, f"text/{key}.txt")
        if not captions:
            notes.empty_caption_files.append(f"text/{key}.txt")
            continue
        items.append(RawItem(key=key, split=split, captions=captions, src=images[key]))
    for key in sorted(set(caption_files) - set(images)):
        notes.captions_without_images.append(f"text/{key}.txt")
    if split_of is not None:
        for key in sorted(set(split_of) - set(images)):
            notes.captions_without_images.append(f"{key} (in a split list, no image)")
    return ScanResult(items, notes, split_source=split_source)
