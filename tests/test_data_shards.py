"""`ratlip prepare ... --format shards`: tar shards, manifest, resumability, img2dataset input, WebDataset compatibility."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from ratlip_cli.cli import app
from ratlip_cli.data import shards as shards_mod
from ratlip_cli.data.prepare import prepare_dataset
from ratlip_cli.data.prepared import load_prepared
from ratlip_cli.data.raw import hash_split
from ratlip_cli.data.shards import file_sha256, load_shards, member_key, open_dataset, order_key
from ratlip_cli.errors import RatlipError


def _folder(src: Path, n: int = 40) -> dict[str, list[str]]:
    """n captioned images (two with dots in their names, one grayscale, one corrupt, one without caption)."""
    captions = {}
    for i in range(n):
        key = f"sub{i % 3}/img.{i:03d}" if i < 2 else f"sub{i % 3}/img_{i:03d}"
        path = src / f"{key}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        mode, colour = ("L", 90) if i == 5 else ("RGB", (i * 6 % 256, 40, 200 - i))
        Image.new(mode, (48 + i, 40), colour).save(path, "JPEG", quality=90)
        caps = [f"picture number {i}", f"another view {i}"]
        path.with_suffix(".txt").write_text("\n".join(caps) + "\n", encoding="utf-8")
        captions[key] = caps
    (src / "sub0/broken.jpg").write_bytes(b"not a jpeg")
    (src / "sub0/broken.txt").write_text("a broken image\n")
    Image.new("RGB", (40, 40)).save(src / "sub1/nocaption.jpg")
    return captions


def _read_tar(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


def test_folder_to_shards_manifest_members_split_and_report(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    captions = _folder(src)
    summary = prepare_dataset("folder", src, out, 32, fmt="shards", shard_mb=0.02, workers=1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "ratlip-shards" and manifest["shard_bytes"] == 20000
    assert manifest["skipped"]["unreadable_images"] == 1 and manifest["skipped"]["images_without_captions"] == 1
    assert manifest["converted_to_rgb"] == {"L": 1}
    assert "sub0/broken" in (out / "report.txt").read_text()
    assert summary.counts == {s: {"images": c["images"], "captions": c["captions"]} for s, c in manifest["counts"].items()}

    seen: dict[str, str] = {}
    for shard in manifest["shards"]:
        path = out / shard["name"]
        assert shard["name"] == f"{shard['split']}/{shard['split']}-{int(shard['name'][-10:-4]):06d}.tar"
        assert path.stat().st_size == shard["bytes"] and file_sha256(path) == shard["sha256"]
        assert shard["bytes"] <= 20000 + 10240 or shard["samples"] == 1  # about the target (tar pads to 10 KiB)
        members = _read_tar(path)
        assert len(members) == 3 * shard["samples"]
        keys_in_order = []
        for i in range(0, len(members), 3):
            (img_name, img), (txt_name, txt), (json_name, meta) = members[i : i + 3]
            meta = json.loads(meta)
            key = meta["key"]
            stem = member_key(key)
            assert (img_name, txt_name, json_name) == (f"{stem}.jpg", f"{stem}.txt", f"{stem}.json")
            assert "." not in stem.rsplit("/", 1)[-1]  # WebDataset splits names at the first dot
            assert txt.decode().splitlines() == captions[key] == meta["captions"]
            assert meta["split"] == shard["split"] == hash_split(key, 10)
            with Image.open(io.BytesIO(img)) as im:
                assert im.mode == "RGB" and min(im.size) == 32 and im.size == (meta["width"], meta["height"])
            seen[key] = shard["split"]
            keys_in_order.append(key)
        assert keys_in_order == sorted(keys_in_order, key=order_key)
    assert set(seen) == set(captions)  # every readable captioned image exactly once
    assert len(manifest["shards"]) >= 3


def test_shards_hold_the_same_images_as_the_prepared_format(tmp_path):
    src = tmp_path / "src"
    _folder(src, 8)
    prepare_dataset("folder", src, tmp_path / "p", 32, workers=1)
    prepare_dataset("folder", src, tmp_path / "s", 32, fmt="shards", workers=1)
    prepared, shards = load_prepared(tmp_path / "p"), load_shards(tmp_path / "s")
    for split in shards.splits:
        for sample in shards.iter_split(split):
            assert sample.image == prepared.image_path(sample.key).read_bytes()
            assert sample.captions == prepared.captions_by_key()[sample.key]


def test_interrupted_shard_writing_resumes_to_identical_bytes(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _folder(src)
    prepare_dataset("folder", src, tmp_path / "straight", 32, fmt="shards", shard_mb=0.02, workers=1)
    want = json.loads((tmp_path / "straight" / "manifest.json").read_text())["shards"]

    out = tmp_path / "out"
    real_close, closed = shards_mod._ShardWriter.close, []

    def close_then_die(self):
        info = real_close(self)
        closed.append(info)
        if len(closed) == 2:
            raise KeyboardInterrupt  # dies after shard 2 is renamed into place, before its journal line
        return info

    monkeypatch.setattr(shards_mod._ShardWriter, "close", close_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("folder", src, out, 32, fmt="shards", shard_mb=0.02, workers=1)
    monkeypatch.setattr(shards_mod._ShardWriter, "close", real_close)
    assert not (out / "manifest.json").exists()
    journal = (out / ".prepare-journal.jsonl").read_text().splitlines()
    assert len(journal) == 2  # header + the first shard (the second died before its journal line)
    (out / want[0]["name"]).with_suffix(".tar.tmp").write_bytes(b"stale")  # a leftover temp file
    summary = prepare_dataset("folder", src, out, 32, fmt="shards", shard_mb=0.02, workers=1)
    assert summary.reused == want[0]["samples"]
    got = json.loads((out / "manifest.json").read_text())["shards"]
    assert got == want  # same names, counts, sizes and sha256
    assert not list(out.rglob("*.tmp"))


def test_other_settings_refused_then_overwrite_replaces(tmp_path):
    src = tmp_path / "src"
    _folder(src, 6)
    out = tmp_path / "out"
    prepare_dataset("folder", src, out, 32, workers=1)
    with pytest.raises(RatlipError, match="other settings .*format"):
        prepare_dataset("folder", src, out, 32, fmt="shards", workers=1)
    prepare_dataset("folder", src, out, 32, fmt="shards", workers=1, overwrite=True)
    assert not (out / "images").exists() and not (out / "images.csv").exists()
    assert isinstance(open_dataset(out), shards_mod.ShardSet)
    with pytest.raises(RatlipError, match="data.format is prepared"):
        open_dataset(out, "prepared")
    with pytest.raises(RatlipError, match="other settings .*shard_bytes"):
        prepare_dataset("folder", src, out, 32, fmt="shards", shard_mb=5, workers=1)


def _img2dataset(src: Path, n: int = 30) -> None:
    """img2dataset's webdataset output: 00000.tar, 00001.tar with 000000000.jpg/.txt/.json per sample."""
    src.mkdir(parents=True)
    for shard in range(2):
        with tarfile.open(src / f"{shard:05d}.tar", "w") as tar:
            for i in range(n // 2):
                key = f"{shard:05d}{i:04d}"
                buf = io.BytesIO()
                Image.new("RGB", (64, 48), (i * 8, shard * 100, 50)).save(buf, "JPEG")
                parts = {"jpg": buf.getvalue(), "txt": f"caption {key}".encode(),
                         "json": json.dumps({"key": key, "url": "http://x", "status": "success"}).encode()}
                if key == "000010002":
                    parts.pop("txt")
                for ext, data in parts.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("fmt", ["shards", "prepared"])
def test_img2dataset_folder_as_input(tmp_path, fmt):
    src = tmp_path / "i2d"
    _img2dataset(src)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prepare", "webdataset", "--src", str(src), "--out", str(out), "--size", "32",
                                      "--format", fmt, "--test-percent", "30", "--workers", "1"])
    assert result.exit_code == 0, result.output
    ds = open_dataset(out)
    manifest = ds.manifest
    assert manifest["skipped"]["images_without_captions"] == 1
    assert manifest["total"]["images"] == 29
    if fmt == "shards":
        samples = {s.key: s for split in ds.splits for s in ds.iter_split(split)}
    else:
        samples = {k: None for k in ds.images["key"]}
    assert len(samples) == 29 and "000010002" not in samples
    test = {k for k in samples if hash_split(k, 30) == "test"}
    assert manifest["counts"]["test"]["images"] == len(test) > 0
    if fmt == "shards":
        assert samples["000000003"].captions == ["caption 000000003"]
        with Image.open(io.BytesIO(samples["000000003"].image)) as im:
            assert im.size == (43, 32)  # 64x48 -> shorter side 32: round(64 * 32 / 48)


def test_bad_shard_options_are_one_line_errors(tmp_path):
    src = tmp_path / "src"
    _folder(src, 4)
    runner = CliRunner()
    r = runner.invoke(app, ["prepare", "folder", "--src", str(src), "--out", str(tmp_path / "o"), "--shard-mb", "5"])
    assert r.exit_code == 2 and "--shard-mb applies to --format shards only" in r.output
    r = runner.invoke(app, ["prepare", "folder", "--src", str(src), "--out", str(tmp_path / "o"), "--test-percent", "5"])
    assert r.exit_code == 2 and "--test-percent applies to `ratlip prepare webdataset` only" in r.output
    r = runner.invoke(app, ["prepare", "webdataset", "--src", str(src), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "holds no .tar files" in r.output
    prepare_dataset("folder", src, tmp_path / "s", 32, fmt="shards", workers=1)
    with pytest.raises(RatlipError, match="must contain \\{name\\}"):
        load_shards(tmp_path / "s", url="/elsewhere/x.tar")


def test_pipe_url_reads_the_same_samples(tmp_path):
    src = tmp_path / "src"
    _folder(src, 6)
    prepare_dataset("folder", src, tmp_path / "s", 32, fmt="shards", workers=1)
    local = load_shards(tmp_path / "s")
    piped = load_shards(tmp_path / "s", url=f"pipe:cat {tmp_path / 's'}/{{name}}")
    for split in local.splits:
        a = [(s.key, s.image, s.captions) for s in local.iter_split(split)]
        b = [(s.key, s.image, s.captions) for s in piped.iter_split(split)]
        assert a == b and a
    broken = load_shards(tmp_path / "s", url="pipe:exit 3; cat {name}")
    with pytest.raises(RatlipError, match="failed with exit status 3"):
        list(broken.iter_split("train"))


def test_webdataset_package_reads_our_shards(tmp_path):
    wds = pytest.importorskip("webdataset")
    src = tmp_path / "src"
    captions = _folder(src, 12)
    prepare_dataset("folder", src, tmp_path / "s", 32, fmt="shards", shard_mb=0.01, workers=1)
    names = [str(tmp_path / "s" / s.name) for s in load_shards(tmp_path / "s").shards]
    got = {}
    for sample in wds.WebDataset(names, shardshuffle=False):
        meta = json.loads(sample["json"])
        assert sample["__key__"] == member_key(meta["key"]) and "jpg" in sample
        got[meta["key"]] = sample["txt"].decode().splitlines()
    assert got == captions


def test_reading_from_mid_shard_seeks_by_the_manifest_index(tmp_path, monkeypatch):
    monkeypatch.setattr(shards_mod, "INDEX_EVERY", 4)
    src = tmp_path / "src"
    _folder(src, 30)
    prepare_dataset("folder", src, tmp_path / "s", 32, fmt="shards", workers=1)
    shard = load_shards(tmp_path / "s").split_shards("train")[0]
    assert len(shard.index) == -(-shard.samples // 4) and shard.index[0] == 0
    path = str(tmp_path / "s" / shard.name)
    full = list(shards_mod.iter_tar_groups(path))
    assert len(full) == shard.samples
    with tarfile.open(path) as tar:  # each indexed offset is the header of that sample's first member
        starts = {m.offset: shards_mod.split_member(m.name)[0] for m in tar}
    assert [starts[o] for o in shard.index] == [full[4 * k][1] for k in range(len(shard.index))]
    for start in range(shard.samples):
        got = list(shards_mod.iter_tar_groups(path, lambda i, s=start: i >= s, None, start, shard.index))
        assert got == full[start:]
    assert list(shards_mod.iter_tar_groups(path, None, 9, 5, shard.index)) == full[4:9]  # from the indexed sample 4
