"""COCO 2014: `images/train2014`, `images/val2014` and the caption JSON files under `annotations/`."""

from __future__ import annotations

import json
from pathlib import Path

from ratlip_cli.data.raw import RawItem, ScanNotes, ScanResult, clean_captions, list_images, require
from ratlip_cli.errors import RatlipError

EXPECTED = (
    "images/train2014/*.jpg, images/val2014/*.jpg, annotations/captions_train2014.json, "
    "annotations/captions_val2014.json"
)
SPLITS = {"train2014": "train", "val2014": "test"}  # GALIP/DF-GAN evaluate on val2014


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise RatlipError(f"cannot read COCO captions {path}: {exc}") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise RatlipError(f"{path} is not a COCO captions file (needs 'images' and 'annotations')")
    return data


def scan(src: Path) -> ScanResult:
    """Find COCO 2014 images and their captions; train2014 is train, val2014 is test."""
    src = Path(src)
    paths = []
    for folder in SPLITS:
        paths += [f"images/{folder}", f"annotations/captions_{folder}.json"]
    require(src, "COCO 2014", EXPECTED, paths)
    notes = ScanNotes()
    items: list[RawItem] = []
    for folder, split in SPLITS.items():
        data = _load_json(src / "annotations" / f"captions_{folder}.json")
        try:
            file_of = {img["id"]: img["file_name"] for img in data["images"]}
            texts: dict[object, list[str]] = {}
            for ann in data["annotations"]:  # captions keep the file's order
                texts.setdefault(ann["image_id"], []).append(str(ann["caption"]))
        except (KeyError, TypeError):
            raise RatlipError(f"{src / 'annotations' / f'captions_{folder}.json'} is malformed") from None
        on_disk = {p.name: p for p in list_images(src / "images" / folder)}
        named = set()
        for image_id, name in sorted(file_of.items(), key=lambda kv: kv[1]):
            named.add(name)
            key = f"{folder}/{Path(name).stem}"
            if name not in on_disk:
                if texts.get(image_id):
                    notes.captions_without_images.append(f"images/{folder}/{name}")
                continue
            captions = clean_captions(texts.get(image_id, []))
            if not captions:
                notes.images_without_captions.append(f"images/{folder}/{name}")
                continue
            items.append(RawItem(key=key, split=split, captions=captions, src=on_disk[name]))
        for name in sorted(set(on_disk) - named):
            notes.images_without_captions.append(f"images/{folder}/{name} (not in the JSON)")
    return ScanResult(items, notes, split_source="train2014 = train, val2014 = test")
