"""`ratlip prepare`: every raw layout from tiny fixtures, the CUB crop, bad input, resumability, the CLI."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ratlip_cli.cli import app
from ratlip_cli.data import prepared as prepared_mod
from ratlip_cli.data.cub import bbox_crop_box
from ratlip_cli.data.prepare import prepare_dataset, resolve_defaults
from ratlip_cli.data.prepared import load_prepared
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import temp_path

RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 200, 20)


def _jpg(path: Path, size=(40, 30), colour=GREEN) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG", quality=95)
    return path


def _txt(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _pickle(path: Path, keys: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(keys, fh, protocol=2)


def _captions(root: Path) -> dict[str, list[str]]:
    return load_prepared(root).captions_by_key()


# --------------------------------------------------------------------------- CUB


def _cub(src: Path) -> None:
    """4 birds in 2 classes; a_1 has a red 30x30 square exactly where its box crop falls."""
    cub = src / "CUB_200_2011"
    keys = ["001.Albatross/a_1", "001.Albatross/a_2", "002.Bunting/b_1", "002.Bunting/b_2"]
    boxes = {
        "001.Albatross/a_1": (30, 20, 20, 20),  # crop (25, 15, 55, 45): the red square
        "001.Albatross/a_2": (0, 30, 20, 20),  # crop clipped at the left edge: (0, 25, 25, 55)
        "002.Bunting/b_1": (10, 10, 60, 40),
        "002.Bunting/b_2": (10, 10, 20, 20),
    }
    img = Image.new("RGB", (100, 80), BLUE)
    img.paste(RED, (25, 15, 55, 45))
    (cub / "images" / "001.Albatross").mkdir(parents=True)
    img.save(cub / "images" / "001.Albatross" / "a_1.jpg", "JPEG", quality=100, subsampling=0)
    for key in keys[1:]:
        _jpg(cub / "images" / f"{key}.jpg", (100, 80))
    (cub / "images.txt").write_text("".join(f"{i} {k}.jpg\n" for i, k in enumerate(keys, 1)))
    (cub / "bounding_boxes.txt").write_text(
        "".join(f"{i} {' '.join(f'{v:.1f}' for v in boxes[k])}\n" for i, k in enumerate(keys, 1))
    )
    for key in keys:
        _txt(src / "text" / f"{key}.txt", [f"caption {j} of {key}" for j in range(10)])
    _pickle(src / "train" / "filenames.pickle", keys[:2])
    _pickle(src / "test" / "filenames.pickle", keys[2:])


def test_cub_counts_split_captions_and_bbox_crop(tmp_path):
    src, out = tmp_path / "birds", tmp_path / "out"
    _cub(src)
    summary = prepare_dataset("cub", src, out, 16, workers=1)
    assert summary.counts == {"test": {"images": 2, "captions": 20}, "train": {"images": 2, "captions": 20}}
    ds = load_prepared(out)
    assert dict(zip(ds.images.key, ds.images.split)) == {
        "001.Albatross/a_1": "train",
        "001.Albatross/a_2": "train",
        "002.Bunting/b_1": "test",
        "002.Bunting/b_2": "test",
    }
    assert _captions(out)["002.Bunting/b_1"] == [f"caption {j} of 002.Bunting/b_1" for j in range(10)]
    # the known box gives the red square and nothing of the blue around it
    crop = np.asarray(Image.open(ds.image_path("001.Albatross/a_1")), dtype=np.int32)
    assert crop.shape == (16, 16, 3)
    assert crop[..., 0].min() > 150 and crop[..., 2].max() < 90
    # clipped crop keeps its aspect: 25 x 30 -> 16 x 19
    assert Image.open(ds.image_path("001.Albatross/a_2")).size == (16, 19)
    assert ds.manifest["layout"] == "cub" and ds.manifest["size"] == 16


def test_bbox_crop_matches_the_field():
    assert bbox_crop_box((30, 20, 20, 20), 100, 80) == (25, 15, 55, 45)
    assert bbox_crop_box((0, 30, 20, 20), 100, 80) == (0, 25, 25, 55)
    assert bbox_crop_box((60.0, 50.0, 40.0, 30.0), 100, 80) == (50, 35, 100, 80)


def test_cub_missing_files_name_the_layout(tmp_path):
    with pytest.raises(RatlipError, match="CUB layout expects"):
        prepare_dataset("cub", tmp_path / "nope", tmp_path / "out", 16)
    src = tmp_path / "birds"
    _cub(src)
    (src / "CUB_200_2011" / "bounding_boxes.txt").unlink()
    with pytest.raises(RatlipError, match="missing CUB_200_2011/bounding_boxes.txt"):
        prepare_dataset("cub", src, tmp_path / "out", 16)


def test_split_pickle_refuses_code(tmp_path):
    src = tmp_path / "birds"
    _cub(src)
    with open(src / "train" / "filenames.pickle", "wb") as fh:
        pickle.dump([Path("x")], fh)  # needs a global: not a plain list of strings
    with pytest.raises(RatlipError, match="cannot read split list"):
        prepare_dataset("cub", src, tmp_path / "out", 16)


# --------------------------------------------------------------------------- Oxford, CelebA, COCO


def test_oxford_class_disjoint_split(tmp_path):
    src = tmp_path / "flowers"
    for cls, n in (("class_00001", 1), ("class_00001", 2), ("class_00005", 3)):
        _jpg(src / "jpg" / f"image_{n:05d}.jpg")
        _txt(src / "text_c10" / cls / f"image_{n:05d}.txt", [f"flower {n}", "petals"])
    _jpg(src / "jpg" / "image_00009.jpg")  # no caption
    summary = prepare_dataset("oxford", src, tmp_path / "out", 16, workers=1)
    assert summary.counts == {"test": {"images": 1, "captions": 2}, "train": {"images": 2, "captions": 4}}
    assert summary.skipped["images_without_captions"] == 1
    ds = load_prepared(tmp_path / "out")
    assert ds.split_images("test").key.tolist() == ["image_00003"]
    assert "class number divisible by 5" in ds.manifest["split_source"]


def test_celeba_split_lists_and_fallback(tmp_path):
    src = tmp_path / "celeba"
    for i in range(6):
        _jpg(src / "images" / f"{i}.jpg", (30, 40))
        _txt(src / "text" / f"{i}.txt", [f"face {i}", "smiling"])
    summary = prepare_dataset("celeba-tiny", src, tmp_path / "a", 16, workers=1)
    assert sum(c["images"] for c in summary.counts.values()) == 6
    (src / "train.txt").write_text("0\n1\n2\n3\n")
    (src / "test.txt").write_text("4.jpg\n5\n")
    summary = prepare_dataset("celeba-tiny", src, tmp_path / "b", 16, workers=1)
    assert summary.counts == {"test": {"images": 2, "captions": 4}, "train": {"images": 4, "captions": 8}}
    assert Image.open(load_prepared(tmp_path / "b").image_path("0")).size == (16, 21)


def test_coco_json_layout(tmp_path):
    src = tmp_path / "coco"
    for folder, ids in (("train2014", [1, 2]), ("val2014", [3])):
        images, anns = [], []
        for i in ids:
            name = f"COCO_{folder}_{i:012d}.jpg"
            _jpg(src / "images" / folder / name)
            images.append({"id": i, "file_name": name})
            anns += [{"id": 10 * i + j, "image_id": i, "caption": f" picture {i} number {j} "} for j in range(5)]
        images.append({"id": 99, "file_name": f"COCO_{folder}_missing.jpg"})
        anns.append({"id": 990, "image_id": 99, "caption": "gone"})
        (src / "annotations").mkdir(exist_ok=True)
        (src / "annotations" / f"captions_{folder}.json").write_text(json.dumps({"images": images, "annotations": anns}))
    summary = prepare_dataset("coco", src, tmp_path / "out", 16, workers=1)
    assert summary.counts == {"test": {"images": 1, "captions": 5}, "train": {"images": 2, "captions": 10}}
    assert summary.skipped["captions_without_images"] == 2
    caps = _captions(tmp_path / "out")
    assert caps["val2014/COCO_val2014_000000000003"][0] == "picture 3 number 0"


# --------------------------------------------------------------------------- folder: bad input


def _messy_folder(src: Path) -> None:
    _jpg(src / "ok.jpg")
    _txt(src / "ok.txt", ["a plain caption", "", "  a second   caption  "])
    Image.new("L", (30, 30), 128).save(src / "gray.png")
    _txt(src / "gray.txt", ["a gray image"])
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(src / "cmyk.jpg", "JPEG")
    _txt(src / "cmyk.txt", ["a cmyk image"])
    rgba = Image.new("RGBA", (30, 30), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 15, 30))
    (src / "sub").mkdir()
    rgba.save(src / "sub" / "alpha.png")
    _txt(src / "sub" / "alpha.txt", ["half transparent"])
    (src / "corrupt.jpg").write_bytes(b"this is not an image")
    _txt(src / "corrupt.txt", ["broken"])
    _jpg(src / "full.jpg", (64, 64))
    (src / "truncated.jpg").write_bytes((src / "full.jpg").read_bytes()[:300])
    (src / "full.jpg").unlink()
    _txt(src / "truncated.txt", ["cut short"])
    _jpg(src / "empty.jpg")
    (src / "empty.txt").write_text("  \n\n")
    _jpg(src / "latin.jpg")
    (src / "latin.txt").write_bytes("a caf\xe9 au lait\n".encode("latin-1"))
    _jpg(src / "nocaption.jpg")
    _txt(src / "orphan.txt", ["no image for me"])


def test_folder_bad_input_is_reported_not_fatal(tmp_path):
    src, out = tmp_path / "raw", tmp_path / "out"
    _messy_folder(src)
    summary = prepare_dataset("folder", src, out, 16, workers=1, split_file=None)
    ds = load_prepared(out)
    keys = set(ds.images.key)
    assert keys == {"ok", "gray", "cmyk", "sub/alpha", "latin"}
    assert summary.skipped["unreadable_images"] == 2
    assert summary.skipped["empty_caption_files"] == 1
    assert summary.skipped["images_without_captions"] == 1
    assert summary.skipped["captions_without_images"] == 1
    assert summary.warnings["non_utf8_caption_files"] == 1
    assert summary.converted == {"CMYK": 1, "L": 1, "RGBA": 1}
    caps = ds.captions_by_key()
    assert caps["ok"] == ["a plain caption", "a second caption"]
    assert caps["latin"] == ["a caf\ufffd au lait"]
    for key in keys:
        with Image.open(ds.image_path(key)) as im:
            assert im.mode == "RGB" and min(im.size) == 16
    alpha = np.asarray(Image.open(ds.image_path("sub/alpha")), dtype=np.int32)
    assert alpha[8, 2, 2] > 150 and alpha[8, 13, 0] > 200  # blue half kept, transparent half white
    report = (out / "report.txt").read_text()
    for text in ("corrupt: ", "truncated: ", "unreadable or corrupt images (skipped): 2", "nocaption.jpg",
                 "orphan.txt", "empty.txt", "non-UTF-8 caption files (decoded with replacement characters): 1",
                 "cmyk (from CMYK)"):
        assert text in report, text
    assert ds.manifest["skipped"]["unreadable_images"] == 2


def test_folder_split_file(tmp_path):
    src = tmp_path / "raw"
    for name in ("a", "b", "c"):
        _jpg(src / f"{name}.jpg")
        _txt(src / f"{name}.txt", [name])
    split = tmp_path / "split.txt"
    split.write_text("# comment\na.jpg train\nb test\nmissing.jpg test\n")
    summary = prepare_dataset("folder", src, tmp_path / "out", 16, workers=1, split_file=split)
    assert summary.counts == {"test": {"images": 1, "captions": 1}, "train": {"images": 1, "captions": 1}}
    assert summary.skipped["not_in_split"] == 1 and summary.skipped["captions_without_images"] == 1
    split.write_text("a.jpg training\n")
    with pytest.raises(RatlipError, match="line 1"):
        prepare_dataset("folder", src, tmp_path / "out2", 16, workers=1, split_file=split)


def test_decoder_warnings_are_reported(tmp_path, monkeypatch):
    src = tmp_path / "raw"
    _jpg(src / "big.jpg", (40, 40))
    _txt(src / "big.txt", ["large"])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 px: a DecompressionBombWarning
    summary = prepare_dataset("folder", src, tmp_path / "out", 16, workers=1)
    assert summary.warnings["decoder_warnings"] == 1
    assert "decoder warnings: 1" in (tmp_path / "out" / "report.txt").read_text()


# --------------------------------------------------------------------------- resumability


class Interrupted(Exception):
    pass


def _tree(root: Path) -> dict[str, bytes]:
    skip = {"manifest.json", ".prepare-journal.jsonl"}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    src = tmp_path / "raw"
    src.mkdir()
    for i in range(10):
        mode, colour = ("L", i * 20) if i % 3 == 0 else ("RGB", (i * 20, 100, 50))
        Image.new(mode, (24 + i, 20), colour).save(src / f"im{i}.png")
        _txt(src / f"im{i}.txt", [f"image {i}", f"again {i}"])
    (src / "bad.jpg").write_bytes(b"junk")
    _txt(src / "bad.txt", ["junk"])
    reference = prepare_dataset("folder", src, tmp_path / "ref", 16, workers=1)

    real_save = prepared_mod._save_atomic
    calls = {"n": 0}

    def flaky_save(img, dst, image_format):
        calls["n"] += 1
        if calls["n"] > 4:  # die half-way through writing the 5th image
            temp_path(dst).write_bytes(b"half")
            raise Interrupted
        real_save(img, dst, image_format)

    monkeypatch.setattr(prepared_mod, "_save_atomic", flaky_save)
    out = tmp_path / "out"
    with pytest.raises(Interrupted):
        prepare_dataset("folder", src, out, 16, workers=1)
    finals = [p for p in (out / "images").rglob("*") if p.suffix == ".jpg"]
    assert len(finals) == 4 and not (out / "manifest.json").exists()
    with pytest.raises(RatlipError, match="no prepared dataset"):
        load_prepared(out)

    monkeypatch.setattr(prepared_mod, "_save_atomic", real_save)
    resumed = prepare_dataset("folder", src, out, 16, workers=1)
    assert resumed.reused == 4 and resumed.processed == reference.processed - 4
    assert _tree(out) == _tree(tmp_path / "ref")
    assert resumed.counts == reference.counts and resumed.converted == reference.converted
    again = prepare_dataset("folder", src, out, 16, workers=1)
    assert again.processed == 1  # only the unreadable file is tried again
    assert _tree(out) == _tree(tmp_path / "ref")


def test_other_settings_need_overwrite(tmp_path):
    src = tmp_path / "raw"
    _jpg(src / "a.jpg")
    _txt(src / "a.txt", ["a"])
    prepare_dataset("folder", src, tmp_path / "out", 16, workers=1)
    with pytest.raises(RatlipError, match="--overwrite"):
        prepare_dataset("folder", src, tmp_path / "out", 20, workers=1)
    prepare_dataset("folder", src, tmp_path / "out", 20, workers=1, overwrite=True)
    assert load_prepared(tmp_path / "out").manifest["size"] == 20
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "precious.txt").write_text("keep")
    with pytest.raises(RatlipError, match="not empty"):
        prepare_dataset("folder", src, tmp_path / "foreign", 16, workers=1)


def test_load_prepared_names_the_fix(tmp_path):
    with pytest.raises(RatlipError, match=r"no prepared dataset at .*cub; run `ratlip prepare cub --src \.\.\. --out"):
        load_prepared(tmp_path / "cub")


def test_defaults_come_from_the_preset():
    assert resolve_defaults("shapes", None, None, None) == (Path("data/shapes"), 64)
    assert resolve_defaults("cub", None, None, None) == (Path("data/cub"), 304)
    assert resolve_defaults("shapes", "tiny", None, None) == (Path("data/tiny"), 32)
    assert resolve_defaults("folder", None, None, 48) == (Path("data/folder"), 48)


# --------------------------------------------------------------------------- CLI


def test_cli_prepare_folder_and_errors(tmp_path):
    src = tmp_path / "raw"
    _messy_folder(src)
    runner = CliRunner()
    result = runner.invoke(app, ["prepare", "folder", "--src", str(src), "--out", str(tmp_path / "o"), "--size", "16",
                                 "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "unreadable images skipped" in result.output
    result = runner.invoke(app, ["prepare", "oxford", "--src", str(tmp_path / "none")])
    assert result.exit_code == 2 and "Oxford-102 layout expects" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["prepare", "shapes", "--src", str(src)])
    assert result.exit_code == 2 and "--src cannot be used for shapes" in result.output
    result = runner.invoke(app, ["prepare", "imagenet"])
    assert result.exit_code != 0
