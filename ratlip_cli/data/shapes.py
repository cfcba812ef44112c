"""The built-in synthetic `shapes` dataset and its checker.

Images: one filled shape (circle, square or triangle) of one of 6 colours, small or big, at a random
position, on one of 3 background colours. The two palettes are disjoint, so a shape never has its
background's colour, and all 9 colours are far apart in RGB so blurry generated images can still be
classified. Captions name exactly what matters ("a small red circle on a blue background") in five
phrasings. The test split holds 6 (colour, shape, background) combinations that never occur in
train (to measure generalisation) plus new images of the seen combinations.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from ratlip_cli.data.raw import RawItem, ScanNotes, ScanResult

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 190, 40),
    "yellow": (240, 220, 30),
    "magenta": (220, 40, 220),
    "cyan": (40, 210, 230),
    "white": (245, 245, 245),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "blue": (30, 50, 200),
    "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle")
# Extent (circle diameter, square side, triangle base and height) as a fraction of the image side.
SIZES: dict[str, tuple[float, float]] = {"small": (0.24, 0.32), "big": (0.48, 0.60)}
SIZE_THRESHOLD = 0.40  # the checker's boundary between small and big extents
MARGIN = 0.06  # shapes keep this fraction of the side free at every border
SUPERSAMPLE = 4
TEMPLATES = (
    "a {size} {colour} {shape} on a {background} background",
    "a {colour} {shape}, {size}, on a {background} background",
    "{size} {colour} {shape} against a {background} background",
    "a {background} background with a {size} {colour} {shape}",
    "there is a {size} {colour} {shape} on a {background} background",
)
SYNONYMS = {"grey": "gray", "large": "big", "little": "small", "circular": "circle", "triangular": "triangle"}
CHANCE = {
    "colour": 1 / len(COLOURS),
    "shape": 1 / len(SHAPES),
    "background": 1 / len(BACKGROUNDS),
    "size": 1 / len(SIZES),
    "all": 1 / (len(COLOURS) * len(SHAPES) * len(BACKGROUNDS)),
}
DEFAULT_SIZE = 64


def held_out_combos() -> list[tuple[str, str, str]]:
    """The (colour, shape, background) combinations seen only in test: each colour once, 6 distinct (shape, bg)."""
    colours, backgrounds = list(COLOURS), list(BACKGROUNDS)
    return [(c, SHAPES[i % 3], backgrounds[(i // 3 + i) % 3]) for i, c in enumerate(colours)]


def caption_for(colour: str, shape: str, background: str, size: str, template: int = 0) -> str:
    """One caption in phrasing number `template` (0..4)."""
    return TEMPLATES[template].format(colour=colour, shape=shape, background=background, size=size)


# --------------------------------------------------------------------------- generation


def render_spec(spec: dict[str, Any], image_size: int):
    """Draw one shapes image (PIL RGB, image_size x image_size), anti-aliased by supersampling."""
    from PIL import Image, ImageDraw

    side = image_size * SUPERSAMPLE
    img = Image.new("RGB", (side, side), BACKGROUNDS[spec["background"]])
    draw = ImageDraw.Draw(img)
    half = spec["extent"] * side / 2
    cx, cy = spec["cx"] * side, spec["cy"] * side
    box = [cx - half, cy - half, cx + half - 1, cy + half - 1]
    fill = COLOURS[spec["colour"]]
    if spec["shape"] == "circle":
        draw.ellipse(box, fill=fill)
    elif spec["shape"] == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
    return img.resize((image_size, image_size), Image.Resampling.BOX)


def shape_items(
    seed: int = 0,
    train_per_combo: int = 32,
    test_per_combo: int = 2,
    novel_per_combo: int = 16,
) -> list[RawItem]:
    """The dataset's items (specs + captions), deterministic given the arguments.

    Per (colour, shape, background, size): `train_per_combo` train images and `test_per_combo` test
    images for the 48 seen combinations; `novel_per_combo` test images for the 6 held-out ones.
    """
    rng = np.random.default_rng(seed)
    held = set(held_out_combos())
    items: list[RawItem] = []
    counter = {"train": 0, "test": 0}
    for colour in COLOURS:
        for shape in SHAPES:
            for background in BACKGROUNDS:
                novel = (colour, shape, background) in held
                plan = [("test", novel_per_combo)] if novel else [("train", train_per_combo), ("test", test_per_combo)]
                for split, count in plan:
                    for size in SIZES:
                        for _ in range(count):
                            lo, hi = SIZES[size]
                            extent = float(rng.uniform(lo, hi))
                            low, high = MARGIN + extent / 2, 1 - MARGIN - extent / 2
                            cx, cy = (float(v) for v in rng.uniform(low, high, size=2))
                            spec = {
                                "colour": colour,
                                "shape": shape,
                                "background": background,
                                "size": size,
                                "extent": round(extent, 6),
                                "cx": round(cx, 6),
                                "cy": round(cy, 6),
                            }
                            n = counter[split]
                            counter[split] += 1
                            key = f"{split}/{n:05d}_{colour}_{shape}_{background}_{size}"
                            captions = [caption_for(colour, shape, background, size, t) for t in range(len(TEMPLATES))]
                            items.append(RawItem(key=key, split=split, captions=captions, spec=spec))
    return items


def shapes_scan(seed: int = 0, train_per_combo: int = 32, test_per_combo: int = 2,
                novel_per_combo: int = 16) -> tuple[ScanResult, dict[str, Any]]:
    """The dataset as a scan (items with specs and captions) and the facts its report records.

    `data.prepare.generate_shapes` writes it (the writers import this module, not the other way round).
    """
    items = shape_items(seed, train_per_combo, test_per_combo, novel_per_combo)
    scan = ScanResult(items, ScanNotes(), split_source="held-out (colour, shape, background) combinations + seen ones")
    extra = {
        "seed": seed,
        "train_per_combo": train_per_combo,
        "test_per_combo": test_per_combo,
        "novel_per_combo": novel_per_combo,
        "colours": {k: list(v) for k, v in COLOURS.items()},
        "backgrounds": {k: list(v) for k, v in BACKGROUNDS.items()},
        "shapes": list(SHAPES),
        "sizes": {k: list(v) for k, v in SIZES.items()},
        "held_out": [list(c) for c in held_out_combos()],
    }
    return scan, extra


# --------------------------------------------------------------------------- checking


def parse_shapes_caption(caption: str) -> dict[str, str | None]:
    """The colour, shape, background and size a caption asks for (None where it names none)."""
    words = [SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+", caption.lower())]
    words = [w[:-1] if w.endswith("s") and w[:-1] in SHAPES else w for w in words]

    def first(options) -> str | None:
        return next((w for w in words if w in options), None)

    return {
        "colour": first(COLOURS),
        "shape": first(SHAPES),
        "background": first(BACKGROUNDS),
        "size": first(SIZES),
    }


def _to_array(image) -> np.ndarray:
    """An (H, W, 3) float array in [0, 255] from a PIL image, a uint8 HWC array or a CHW float in [-1, 1]."""
    if hasattr(image, "convert") and hasattr(image, "size") and not isinstance(image, np.ndarray):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().float().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim != 3 or 3 not in (arr.shape[0], arr.shape[-1]):
        raise ValueError(f"expected an RGB image, got an array of shape {arr.shape}")
    if arr.shape[-1] != 3:
        arr = np.transpose(arr, (1, 2, 0))
    if arr.dtype.kind == "f":
        return (np.clip(arr.astype(np.float32), -1, 1) + 1) * 127.5
    return arr.astype(np.float32)


def _nearest(palette: dict[str, tuple[int, int, int]], colour: np.ndarray) -> str:
    names = list(palette)
    refs = np.array([palette[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((refs - colour) ** 2).sum(-1)))]


def _moments(alpha: np.ndarray) -> dict[str, float]:
    """Shape features of a soft mask that do not depend on scale or position (sub-pixel accurate)."""
    h, w = alpha.shape
    mass = float(alpha.sum())
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    y = ys - (alpha * ys).sum() / mass
    x = xs - (alpha * xs).sum() / mass

    def mom(u: np.ndarray, k: int) -> float:
        return float((alpha * u**k).sum() / mass)

    def kurtosis(u: np.ndarray) -> float:
        return mom(u, 4) / max(mom(u, 2) ** 2, 1e-12)

    skew = max(abs(mom(y, 3)), abs(mom(x, 3))) / max(mom(y, 2), mom(x, 2), 1e-12) ** 1.5
    u, v = (x + y) / np.sqrt(2), (x - y) / np.sqrt(2)
    ratio = (kurtosis(u) + kurtosis(v)) / max(kurtosis(x) + kurtosis(y), 1e-12)
    return {"mass": mass, "skew": skew, "kurtosis_ratio": ratio}


def _segment(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(background colour, reference colours, per-pixel labels, object mask) of an (H, W, 3) array.

    Background: the median border pixel. Labels: nearest of (background, the 6 shape colours), 0 =
    background. Object: the largest connected part of the non-background pixels (all False if none).
    """
    from scipy import ndimage

    h, w = arr.shape[:2]
    b = max(1, round(min(h, w) * 0.04))
    border = np.concatenate(
        [arr[:b].reshape(-1, 3), arr[-b:].reshape(-1, 3), arr[:, :b].reshape(-1, 3), arr[:, -b:].reshape(-1, 3)]
    )
    bg_ref = np.median(border, axis=0)
    refs = np.array([bg_ref] + [COLOURS[n] for n in COLOURS], dtype=np.float32)
    labels = np.argmin(((arr[:, :, None, :] - refs[None, None]) ** 2).sum(-1), axis=-1)
    fg = labels > 0
    parts, count = ndimage.label(fg)
    if count > 1:
        sizes = np.bincount(parts.ravel())
        sizes[0] = 0
        mask = parts == int(np.argmax(sizes))
    else:
        mask = fg
    return bg_ref, refs, labels, mask


def object_mask(image) -> np.ndarray:
    """The checker's segmentation of an image's object: a boolean (H, W) mask (all False when it finds none).

    The same mask `analyse_shapes` reads colour, shape and size from (see `_segment`); the Grad-CAM
    object share of docs/ablation.md is measured against it.
    """
    return _segment(_to_array(image))[3]


def analyse_shapes(image) -> dict[str, Any]:
    """What an image shows: background (border colour), colour, shape and size of its main object.

    Background: nearest background colour to the median border pixel. Foreground: pixels nearer to a
    shape colour than to the measured background; its largest connected part is the object and its
    majority palette colour is the colour. Shape, from the moments of the object's soft coverage mask
    (each pixel's position between background and object colour): a triangle is skewed (|skewness|
    > 0.15; circles and squares have 0), a square's projection on the diagonal is more peaked than
    on the axes (4th-moment ratio 1.33 vs 1.0 for a circle; threshold 1.06). Size: the side of the
    shape of that area (circle diameter, square side, triangle base) over the image side, big > 0.40.
    """
    from scipy import ndimage

    arr = _to_array(image)
    h, w = arr.shape[:2]
    bg_ref, refs, labels, mask = _segment(arr)
    result: dict[str, Any] = {"background": _nearest(BACKGROUNDS, bg_ref), "colour": None, "shape": None, "size": None}
    names = list(COLOURS)
    if not mask.any():
        return result
    votes = np.bincount(labels[mask], minlength=len(refs))
    colour_idx = int(np.argmax(votes[1:])) + 1
    result["colour"] = names[colour_idx - 1]

    direction = refs[colour_idx] - bg_ref
    norm = float(direction @ direction)
    region = ndimage.binary_dilation(mask, iterations=1)
    if norm < 1e-6:
        alpha = mask.astype(np.float64)
    else:
        alpha = np.clip(((arr - bg_ref) @ direction) / norm, 0.0, 1.0) * region
    rows, cols = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
    alpha = alpha[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # moments are translation invariant
    feats = _moments(alpha.astype(np.float64))
    if feats["skew"] > 0.15:
        shape = "triangle"
    elif feats["kurtosis_ratio"] > 1.06:
        shape = "square"
    else:
        shape = "circle"
    area_factor = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[shape]
    extent = float(np.sqrt(feats["mass"] / area_factor)) / min(h, w)
    result["shape"] = shape
    result["size"] = "big" if extent > SIZE_THRESHOLD else "small"
    result["features"] = {
        "skew": round(feats["skew"], 3),
        "kurtosis_ratio": round(feats["kurtosis_ratio"], 3),
        "extent": round(extent, 3),
    }
    return result


def check_shapes(image, caption: str) -> dict[str, Any]:
    """Whether an image matches its caption: booleans `colour`, `shape`, `background`, `size` and `all`.

    `all` is colour and shape and background. `image`: PIL image, uint8 (H, W, 3) array, or a
    (3, H, W) float tensor/array in [-1, 1] (generator output). Also returns `predicted` and `expected`.
    """
    expected = parse_shapes_caption(caption)
    predicted = analyse_shapes(image)
    out: dict[str, Any] = {
        k: expected[k] is not None and predicted[k] == expected[k] for k in ("colour", "shape", "background", "size")
    }
    out["all"] = out["colour"] and out["shape"] and out["background"]
    out["predicted"] = {k: predicted[k] for k in ("colour", "shape", "background", "size")}
    out["expected"] = expected
    return out


def score_shapes(images: Sequence | Any, captions: Sequence[str]) -> dict[str, Any]:
    """Match rates over a batch (a (B, 3, H, W) tensor in [-1, 1] or a list of images) and chance levels.

    Returns {"colour", "shape", "background", "size", "all": rates in [0, 1], "n": B, "chance": {...}}.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    keys = ("colour", "shape", "background", "size", "all")
    totals = dict.fromkeys(keys, 0)
    for image, caption in zip(images, captions):
        res = check_shapes(image, caption)
        for k in keys:
            totals[k] += int(res[k])
    n = len(captions)
    rates = {k: (totals[k] / n if n else 0.0) for k in keys}
    return {**rates, "n": n, "chance": dict(CHANCE)}
