"""Oxford-102 flowers: `jpg/image_XXXXX.jpg` with captions `text_c10/class_XXXXX/image_XXXXX.txt`."""

from __future__ import annotations

import re
from pathlib import Path

from ratlip_cli.data.raw import (
    RawItem,
    ScanNotes,
    ScanResult,
    list_images,
    load_split_pickle,
    read_captions,
    read_key_list,
    require,
    strip_image_suffix,
)

EXPECTED = "jpg/image_XXXXX.jpg and text_c10/class_XXXXX/image_XXXXX.txt"
TEST_CLASS_EVERY = 5  # fallback split: classes 5, 10, ..., 100 (20 of 102) are the test classes


def _class_number(name: str) -> int:
    match = re.search(r"(\d+)", name)
    return int(match.group(1)) if match else 0


def _split_function(src: Path) -> tuple[str, dict[str, str] | None, set[str] | None]:
    """(description, key -> split from pickles, or the set of test classes)."""
    if (src / "train" / "filenames.pickle").is_file() and (src / "test" / "filenames.pickle").is_file():
        split_of = {}
        for split in ("train", "test"):
            for entry in load_split_pickle(src / split / "filenames.pickle"):
                split_of[Path(strip_image_suffix(entry)).name] = split
        return "train/filenames.pickle, test/filenames.pickle", split_of, None
    if (src / "testclasses.txt").is_file():
        test_classes = {Path(c).name for c in read_key_list(src / "testclasses.txt")}
        return "testclasses.txt (class-disjoint)", None, test_classes
    return f"class-disjoint fallback: class number divisible by {TEST_CLASS_EVERY} is test", None, None


def scan(src: Path) -> ScanResult:
    """Find Oxford-102 images and captions and a class-disjoint train/test split."""
    src = Path(src)
    require(src, "Oxford-102", EXPECTED, ["jpg", "text_c10"])
    notes = ScanNotes()
    split_source, split_of, test_classes = _split_function(src)

    caption_files: dict[str, Path] = {}
    class_of: dict[str, str] = {}
    for txt in sorted((src / "text_c10").glob("class_*/*.txt")):
        caption_files[txt.stem] = txt
        class_of[txt.stem] = txt.parent.name
    images = {p.stem: p for p in list_images(src / "jpg")}

    items: list[RawItem] = []
    for key in sorted(images):
        if key not in caption_files:
            notes.images_without_captions.append(f"jpg/{images[key].name}")
            continue
        cls = class_of[key]
        if split_of is not None:
            if key not in split_of:
                notes.not_in_split.append(key)
                continue
            split = split_of[key]
        elif test_classes is not None:
            split = "test" if cls in test_classes else "train"
        else:
            split = "test" if _class_number(cls) % TEST_CLASS_EVERY == 0 else "train"
        captions = read_captions(caption_files[key], notes, f"text_c10/{cls}/{key}.txt")
        if not captions:
            notes.empty_caption_files.append(f"text_c10/{cls}/{key}.txt")
            continue
        items.append(RawItem(key=key, split=split, captions=captions, src=images[key]))
    for key in sorted(set(caption_files) - set(images)):
        notes.captions_without_images.append(f"text_c10/{class_of[key]}/{key}.txt")
    return ScanResult(items, notes, split_source=split_source)
