"""The synthetic `shapes` dataset: deterministic, held-out combinations, and a checker that reads captions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from ratlip_cli.data.prepare import generate_shapes
from ratlip_cli.data.prepared import load_prepared
from ratlip_cli.data.shapes import (
    BACKGROUNDS,
    CHANCE,
    COLOURS,
    check_shapes,
    held_out_combos,
    parse_shapes_caption,
    score_shapes,
)

SMALL = {"train_per_combo": 2, "test_per_combo": 1, "novel_per_combo": 2}


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "shapes"
    generate_shapes(root, size=32, **SMALL)
    return root


def _attrs(caption: str) -> tuple:
    p = parse_shapes_caption(caption)
    return p["colour"], p["shape"], p["background"]


def test_counts_split_and_held_out_combinations(shapes_root):
    ds = load_prepared(shapes_root)
    assert ds.manifest["counts"] == {
        "test": {"images": 48 * 2 * 1 + 6 * 2 * 2, "captions": 120 * 5},
        "train": {"images": 48 * 2 * 2, "captions": 192 * 5},
    }
    train = {_attrs(c) for c in ds.split_captions("train")}
    test = {_attrs(c) for c in ds.split_captions("test")}
    held = set(held_out_combos())
    assert len(held) == 6 and not (train & held) and held <= test
    assert len(train) == 48
    with Image.open(ds.image_path(ds.images.key[0])) as im:
        assert im.size == (32, 32) and im.mode == "RGB"


def test_generation_is_deterministic(tmp_path, shapes_root):
    again = tmp_path / "again"
    generate_shapes(again, size=32, **SMALL)
    for name in ("images.csv", "captions.csv"):
        assert (again / name).read_bytes() == (shapes_root / name).read_bytes()
    keys = load_prepared(again).images.key.tolist()
    for key in keys[::37]:
        assert (again / "images" / f"{key}.png").read_bytes() == (shapes_root / "images" / f"{key}.png").read_bytes()


def test_palettes_are_disjoint_and_far_apart():
    assert set(COLOURS).isdisjoint(BACKGROUNDS)
    colours = [np.array(c, dtype=float) for c in [*COLOURS.values(), *BACKGROUNDS.values()]]
    assert min(np.linalg.norm(a - b) for a, b in itertools.combinations(colours, 2)) > 140


def test_checker_scores_own_images_and_chance_on_shuffled(shapes_root):
    ds = load_prepared(shapes_root)
    pairs = ds.split_pairs("train")
    pairs = pairs[pairs.caption_idx == 0]
    images = [Image.open(shapes_root / p).convert("RGB") for p in pairs.path]
    captions = pairs.text.tolist()
    own = score_shapes(images, captions)
    for key in ("colour", "shape", "background", "size", "all"):
        assert own[key] >= 0.99, (key, own[key])
    shuffled = [captions[i] for i in np.random.default_rng(0).permutation(len(captions))]
    rates = score_shapes(images, shuffled)
    for key in ("colour", "shape", "background", "size"):
        assert abs(rates[key] - CHANCE[key]) < 0.1, (key, rates[key])
    assert rates["all"] < 0.1 and rates["chance"]["colour"] == pytest.approx(1 / 6)


def test_checker_accepts_generator_tensors_and_blur(shapes_root):
    ds = load_prepared(shapes_root)
    pairs = ds.split_pairs("test")
    pairs = pairs[pairs.caption_idx == 3].head(40)
    batch = torch.stack(
        [torch.from_numpy(np.array(Image.open(shapes_root / p).convert("RGB"))).permute(2, 0, 1) for p in pairs.path]
    ).float() / 127.5 - 1
    blurred = torch.nn.functional.avg_pool2d(batch, 3, stride=1, padding=1, count_include_pad=False)
    assert score_shapes(blurred, pairs.text.tolist())["all"] >= 0.95
    res = check_shapes(batch[0], pairs.text.iloc[0])
    assert res["all"] and set(res) >= {"colour", "shape", "background", "predicted", "expected"}


def test_checker_rejects_wrong_attributes():
    from ratlip_cli.data.shapes import render_spec

    spec = {"colour": "red", "shape": "square", "background": "blue", "size": "big", "extent": 0.55, "cx": 0.5, "cy": 0.5}
    img = render_spec(spec, 64)
    assert check_shapes(img, "a big red square on a blue background")["all"]
    res = check_shapes(img, "a big green circle on a grey background")
    assert not res["colour"] and not res["shape"] and not res["background"] and res["size"]
    assert parse_shapes_caption("Large white triangles against a grey background") == {
        "colour": "white", "shape": "triangle", "background": "gray", "size": "big",
    }
    blank = Image.new("RGB", (32, 32), BACKGROUNDS["black"])
    res = check_shapes(blank, "a red circle on a black background")
    assert res["background"] and not res["colour"] and not res["shape"]
