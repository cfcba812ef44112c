"""`ratlip eval` on a tar-shard dataset: the test split and its reference statistics equal the prepared format's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ratlip_cli.cli import app
from ratlip_cli.data.prepared import write_prepared
from ratlip_cli.data.raw import RawItem, ScanNotes, ScanResult
from ratlip_cli.data.shards import load_shards, write_shards
from ratlip_cli.evaluate import load_test_split, reference_statistics
from ratlip_cli.errors import RatlipError
from ratlip_cli.metrics.features import build_feature_extractor


@pytest.fixture
def both(tmp_path):
    """The same 14 captioned images (12 test, 40x32) as a prepared dataset and as shards of ~5 kB."""
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    items = []
    for i in range(14):
        arr = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
        Image.fromarray(arr).save(raw / f"img{i:02d}.png")
        caps = [f"picture {i}", f"view {i} of things"]
        items.append(RawItem(key=f"img{i:02d}", split="test" if i < 12 else "train", captions=caps, src=raw / f"img{i:02d}.png"))
    scan = ScanResult(items, ScanNotes())
    write_prepared(tmp_path / "p", "folder", raw, scan, size=32, image_format="png")
    write_shards(tmp_path / "s", "folder", raw, scan, size=32, image_format="png", shard_mb=0.005)
    assert len(load_shards(tmp_path / "s").split_shards("test")) > 1
    return tmp_path / "p", tmp_path / "s"


def test_shard_test_split_and_reference_statistics_equal_the_prepared_ones(tmp_path, both):
    prepared, shards = both
    a, b = load_test_split(prepared), load_test_split(shards)
    assert b.keys == a.keys == [f"img{i:02d}" for i in range(12)]
    assert b.captions == a.captions and b.fingerprint == a.fingerprint
    extractor = build_feature_extractor("random-tiny", "clean", "", torch.device("cpu"))
    ra = reference_statistics(a, 32, extractor, tmp_path / "cache-a", batch_size=5)
    rb = reference_statistics(b, 32, extractor, tmp_path / "cache-b", batch_size=5)
    np.testing.assert_array_equal(ra.features, rb.features)
    assert ra.features.shape[0] == 12


def test_eval_cli_reads_a_shard_dataset_and_refuses_piped_shards(tmp_path, both):
    _, shards = both
    split = load_test_split(shards)
    images = tmp_path / "imgs"
    images.mkdir()
    rows = ["file,caption"]
    for i, (member, caps) in enumerate(zip(split.paths, split.captions)):
        Image.open(member.open()).convert("RGB").resize((32, 32)).save(images / f"{i}.png")
        rows.append(f"{i}.png,{caps[0]}")
    (images / "captions.csv").write_text("\n".join(rows) + "\n")
    args = ["eval", "--images", str(images), "--captions", str(images / "captions.csv"), "--dataset", str(shards),
            "--preset", "tiny", "--set", f"eval.cache_dir={tmp_path / 'cache'}", "--device", "cpu", "--json", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert '"num_images": 12' in result.stdout and '"ref_images": 12' in result.stdout
    with pytest.raises(RatlipError, match="needs local shards"):
        load_test_split(shards, "test", shard_url=f"pipe:cat {shards}/{{name}}")
