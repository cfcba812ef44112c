"""TextImageDataset: item shapes and ranges, augmentation, per-epoch caption determinism, workers."""

from __future__ import annotations

import open_clip
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ratlip_cli.config import DataConfig
from ratlip_cli.data.dataset import TextImageDataset, eval_image, to_model_range
from ratlip_cli.data.prepare import generate_shapes, prepare_dataset
from ratlip_cli.data.prepared import load_prepared
from ratlip_cli.errors import RatlipError
from ratlip_cli.weights import register_model_configs


@pytest.fixture(scope="module")
def tokenizer():
    register_model_configs()
    return open_clip.get_tokenizer("ratlip-tiny")  # context length 16


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "shapes"
    generate_shapes(root, size=32, train_per_combo=1, test_per_combo=1, novel_per_combo=1)
    return root


def _cfg(load=32, crop=32, flip=False) -> DataConfig:
    return DataConfig(name="shapes", root="", prepared_size=32, load_size=load, crop_size=crop, flip=flip)


def test_items_have_the_documented_shapes(shapes_root, tokenizer):
    ds = TextImageDataset(shapes_root, "train", _cfg(), tokenizer, train=True)
    assert len(ds) == 96
    item = ds[5]
    assert set(item) == {"image", "tokens", "caption", "index"}
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["image"].min() < -0.5  # uses the range, not squashed into [0, 1]
    assert item["tokens"].shape == (16,) and item["tokens"].dtype == torch.long
    assert item["index"] == 5 and item["caption"] in ds.captions[5]


def test_captions_are_deterministic_per_epoch(shapes_root, tokenizer):
    a = TextImageDataset(shapes_root, "train", _cfg(), tokenizer, train=True, seed=3)
    b = TextImageDataset(shapes_root, "train", _cfg(), tokenizer, train=True, seed=3)
    epoch0 = [a[i]["caption"] for i in range(len(a))]
    assert epoch0 == [b[i]["caption"] for i in reversed(range(len(b)))][::-1]  # order-independent
    a.set_epoch(1)
    epoch1 = [a[i]["caption"] for i in range(len(a))]
    assert epoch1 != epoch0
    a.set_epoch(0)
    assert [a[i]["caption"] for i in range(len(a))] == epoch0
    c = TextImageDataset(shapes_root, "train", _cfg(), tokenizer, train=True, seed=4)
    assert [c[i]["caption"] for i in range(len(c))] != epoch0
    assert len(set(epoch0) | set(epoch1)) > len(a)  # several phrasings get used


def test_train_augmentation_and_eval_centre_crop(shapes_root, tokenizer):
    cfg = _cfg(load=40, crop=32, flip=True)
    train = TextImageDataset(shapes_root, "test", cfg, tokenizer, train=True)
    views = set()
    for epoch in range(6):
        train.set_epoch(epoch)
        views.add(train[0]["image"].numpy().tobytes())
    assert len(views) > 1  # crops and flips change with the epoch
    train.set_epoch(2)
    assert torch.equal(train[0]["image"], train[0]["image"])
    test = TextImageDataset(shapes_root, "test", cfg, tokenizer, train=False)
    first = test[0]["image"]
    test.set_epoch(5)
    assert torch.equal(test[0]["image"], first) and first.shape == (3, 32, 32)
    assert torch.equal(first, eval_image(test.paths[0], 40, 32))


def test_long_captions_are_truncated_and_aspect_is_cropped(tmp_path, tokenizer):
    src = tmp_path / "raw"
    src.mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (60, 30), (200, 10, 10)).save(src / f"{name}.png")
        (src / f"{name}.txt").write_text(" ".join(["a very long caption"] * 20) + "\nshort one\n")
    prepare_dataset("folder", src, tmp_path / "out", 24, workers=1)
    prep = load_prepared(tmp_path / "out")
    split = prep.splits[0]
    ds = TextImageDataset(prep, split, _cfg(load=24, crop=24), tokenizer, train=False)
    long_tokens = tokenizer([" ".join(["a very long caption"] * 20)])[0]
    assert long_tokens.shape == (16,)
    item = ds[0]
    assert item["image"].shape == (3, 24, 24) and item["tokens"].shape == (16,)
    assert prep.split_captions(split)[:2] == [" ".join(["a very long caption"] * 20), "short one"]


def test_dataloader_workers_give_the_same_batches(shapes_root, tokenizer):
    ds = TextImageDataset(shapes_root, "test", _cfg(load=36, crop=32, flip=True), tokenizer, train=True)
    ds.set_epoch(7)
    plain = next(iter(DataLoader(ds, batch_size=8, num_workers=0)))
    forked = next(iter(DataLoader(ds, batch_size=8, num_workers=2)))
    assert plain["image"].shape == (8, 3, 32, 32) and plain["tokens"].shape == (8, 16)
    assert torch.equal(plain["image"], forked["image"]) and plain["caption"] == forked["caption"]


def test_split_captions_and_errors(shapes_root, tokenizer):
    prep = load_prepared(shapes_root)
    caps = prep.split_captions("test")
    assert len(caps) == len(prep.split_images("test")) * 5 and caps == prep.split_captions("test")
    with pytest.raises(RatlipError, match="split 'val'"):
        TextImageDataset(shapes_root, "val", _cfg(), tokenizer, train=True)
    with pytest.raises(RatlipError, match="ratlip prepare shapes --out"):
        TextImageDataset(shapes_root.parent / "shapes-missing" / "shapes", "train", _cfg(), tokenizer, train=True)


def test_uint8_hand_over_gives_the_same_floats_after_conversion(shapes_root, tokenizer):
    """Training loaders hand uint8 pixels over; `to_model_range` must rebuild exactly the float items."""
    cfg = _cfg(load=36, crop=32, flip=True)
    as_float = TextImageDataset(shapes_root, "train", cfg, tokenizer, train=True, seed=2)
    as_uint8 = TextImageDataset(shapes_root, "train", cfg, tokenizer, train=True, seed=2, uint8=True)
    batch_f = torch.stack([as_float[i]["image"] for i in range(8)])
    batch_u = torch.stack([as_uint8[i]["image"] for i in range(8)])
    assert batch_u.dtype == torch.uint8 and batch_u.shape == (8, 3, 32, 32)
    assert batch_u.float().std() > 10  # real pixels, not a constant
    assert torch.equal(to_model_range(batch_u), batch_f)  # bit-identical, crops and flips included
    assert to_model_range(batch_f) is batch_f  # floats pass through


def test_decoded_copy_gives_the_same_items_and_is_ignored_when_stale(tmp_path, tokenizer):
    import json

    from ratlip_cli.data.decoded import INDEX_FILE, PIXELS_FILE, open_decoded, write_decoded

    root = tmp_path / "shapes"
    generate_shapes(root, size=32, train_per_combo=1, test_per_combo=1, novel_per_combo=1)
    write_decoded(root)
    index = json.loads((root / INDEX_FILE).read_text())
    assert len(index["images"]) == len(load_prepared(root).images)
    assert (root / PIXELS_FILE).stat().st_size == sum(h * w * 3 for _, h, w in index["images"].values())
    for load, crop, uint8 in ((32, 28, True), (36, 32, False)):  # stored size, and a resize from the copy
        cfg = _cfg(load=load, crop=crop, flip=True)
        files = TextImageDataset(root, "train", cfg, tokenizer, train=True, seed=1, uint8=uint8)
        copy = TextImageDataset(root, "train", cfg, tokenizer, train=True, seed=1, uint8=uint8, decoded=True)
        assert copy.decoded is not None and files.decoded is None
        for i in range(0, len(files), 7):
            assert torch.equal(copy[i]["image"], files[i]["image"]), i
    # the copy must be the pixels: deleting an image file does not change the decoded item
    cfg = _cfg(load=32, crop=32)
    copy = TextImageDataset(root, "train", cfg, tokenizer, train=False, decoded=True)
    before = copy[3]["image"].clone()
    copy.paths[3].unlink()
    assert torch.equal(copy[3]["image"], before)
    # a dataset prepared again (different manifest) makes the copy stale: ignored, with a warning
    manifest = root / "manifest.json"
    manifest.write_text(manifest.read_text().replace("{", '{"touched": 1, ', 1))
    assert open_decoded(load_prepared(root)) is None


def test_prepare_writes_the_decoded_copy_and_refuses_it_for_shards(tmp_path):
    from typer.testing import CliRunner

    from ratlip_cli.cli import app
    from ratlip_cli.data.decoded import INDEX_FILE, PIXELS_FILE

    out = tmp_path / "shapes"
    result = CliRunner().invoke(app, ["prepare", "shapes", "--out", str(out), "--size", "32", "--decoded"])
    assert result.exit_code == 0, result.output
    assert (out / PIXELS_FILE).stat().st_size > 0 and (out / INDEX_FILE).is_file()
    result = CliRunner().invoke(app, ["prepare", "shapes", "--out", str(tmp_path / "s"), "--format", "shards",
                                      "--decoded"])
    assert result.exit_code == 2 and "--decoded cannot be used with --format shards" in result.output
    assert not (tmp_path / "s").exists()
