"""CUB-200-2011 birds in the StackGAN/DF-GAN/GALIP layout, with the field's bounding-box crop."""

from __future__ import annotations

from pathlib import Path

from ratlip_cli.data.raw import RawItem, ScanNotes, ScanResult, load_split_pickle, read_captions, require
from ratlip_cli.errors import RatlipError

EXPECTED = (
    "CUB_200_2011/images/<class>/<img>.jpg, CUB_200_2011/images.txt, CUB_200_2011/bounding_boxes.txt, "
    "text/<class>/<img>.txt, train/filenames.pickle, test/filenames.pickle"
)


def bbox_crop_box(bbox: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """The field's CUB crop: a square of side 1.5 * max(w, h) centred on the box, clipped to the image.

    Same integer arithmetic as DF-GAN/GALIP `get_imgs`; returns (left, top, right, bottom) for PIL.
    """
    x, y, w, h = bbox
    r = int(max(w, h) * 0.75)
    cx = int((2 * x + w) / 2)
    cy = int((2 * y + h) / 2)
    return max(0, cx - r), max(0, cy - r), min(width, cx + r), min(height, cy + r)


def _read_table(path: Path, columns: int) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != columns:
            raise RatlipError(f"{path} line {n}: expected {columns} fields, got {len(parts)}")
        rows[parts[0]] = parts[1:]
    return rows


def scan(src: Path) -> ScanResult:
    """Find CUB images, boxes, captions and the standard text-to-image split (8,855 / 2,933)."""
    src = Path(src)
    files = [
        "CUB_200_2011/images",
        "CUB_200_2011/images.txt",
        "CUB_200_2011/bounding_boxes.txt",
        "text",
        "train/filenames.pickle",
        "test/filenames.pickle",
    ]
    require(src, "CUB", EXPECTED, files)
    cub = src / "CUB_200_2011"
    names = _read_table(cub / "images.txt", 2)
    boxes = _read_table(cub / "bounding_boxes.txt", 5)
    notes = ScanNotes()

    relpaths: dict[str, str] = {}  # key -> path relative to CUB_200_2011/images
    bbox_of: dict[str, tuple[float, float, float, float]] = {}
    for image_id, (rel,) in names.items():
        key = rel.rsplit(".", 1)[0]
        relpaths[key] = rel
        if image_id not in boxes:
            raise RatlipError(f"{cub / 'bounding_boxes.txt'} has no box for image id {image_id} ({rel})")
        try:
            bbox_of[key] = tuple(float(v) for v in boxes[image_id])  # type: ignore[assignment]
        except ValueError:
            raise RatlipError(f"{cub / 'bounding_boxes.txt'}: bad numbers for image id {image_id}") from None

    split_of: dict[str, str] = {}
    for split in ("train", "test"):
        for entry in load_split_pickle(src / split / "filenames.pickle"):
            split_of[entry.rsplit(".jpg", 1)[0] if entry.endswith(".jpg") else entry] = split

    text_dir = src / "text"
    caption_keys = {p.relative_to(text_dir).with_suffix("").as_posix() for p in text_dir.glob("*/*.txt")}
    items: list[RawItem] = []
    for key in sorted(relpaths):
        image = cub / "images" / relpaths[key]
        has_image = image.is_file()
        if key not in split_of:
            notes.not_in_split.append(key)
            continue
        if not has_image:
            notes.captions_without_images.append(f"{key} (listed in images.txt, file missing)")
            continue
        if key not in caption_keys:
            notes.images_without_captions.append(key)
            continue
        captions = read_captions(text_dir / f"{key}.txt", notes, f"text/{key}.txt")
        if not captions:
            notes.empty_caption_files.append(f"text/{key}.txt")
            continue
        items.append(RawItem(key=key, split=split_of[key], captions=captions, src=image, bbox=bbox_of[key]))
    for key in sorted(set(split_of) - set(relpaths)):
        notes.captions_without_images.append(f"{key} (in a split list, not in images.txt)")
    for key in sorted(caption_keys - set(relpaths)):
        notes.captions_without_images.append(f"text/{key}.txt")
    return ScanResult(items, notes, split_source="train/filenames.pickle, test/filenames.pickle")
