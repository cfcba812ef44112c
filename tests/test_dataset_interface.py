"""One dataset interface: every reader of a prepared dataset gets the same split from the folder format
and from tar shards (issue 26: in-domain CLIP pretraining crashed on shards)."""

from __future__ import annotations

import numpy as np
import pytest

from ratlip_cli.clip_pretrain import _Split
from ratlip_cli.config import DataConfig
from ratlip_cli.data import generate_shapes
from ratlip_cli.data.dataset import TextImageDataset
from ratlip_cli.data.shards import open_dataset
from ratlip_cli.data.split import dataset_record, read_split
from ratlip_cli.train.shapes_eval import shapes_eval_captions


@pytest.fixture(scope="module")
def shapes_both(tmp_path_factory):
    """The shapes dataset (1 image per combination and size in train) in both formats, several shards."""
    root = tmp_path_factory.mktemp("shapes")
    kw = dict(size=32, train_per_combo=1, test_per_combo=1, novel_per_combo=1)
    generate_shapes(root / "prepared", **kw)
    generate_shapes(root / "shards", fmt="shards", shard_mb=0.02, **kw)
    return root / "prepared", root / "shards"


@pytest.mark.parametrize("split", ["train", "test"])
def test_read_split_is_the_same_in_both_formats(shapes_both, split):
    a, b = (read_split(p, split) for p in shapes_both)
    assert len(a) > 10 and a.keys == b.keys == sorted(a.keys)
    assert a.captions == b.captions and all(len(c) == 5 for c in a.captions)
    assert a.fingerprint == b.fingerprint
    for i in (0, len(a) - 1):
        assert np.array_equal(np.asarray(a.open_image(i)), np.asarray(b.open_image(i)))
    assert dataset_record(a)["fingerprint"] == a.fingerprint and dataset_record(b)["dataset"].endswith("shards")


def test_clip_pretraining_split_reads_shards(shapes_both):
    a, b = (_Split(open_dataset(p), "train", 16) for p in shapes_both)
    assert a.images.shape == (len(a.keys), 16, 16, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images) and a.captions == b.captions


def test_text_image_dataset_and_shapes_captions_read_shards(shapes_both):
    cfg = DataConfig(name="shapes", prepared_size=32, load_size=32, crop_size=32, flip=False)

    def tok(texts):
        import torch

        return torch.zeros(len(texts), 4, dtype=torch.long)

    a, b = (TextImageDataset(p, "train", cfg, tok, train=False) for p in shapes_both)
    assert len(a) == len(b)
    assert (a[3]["image"] == b[3]["image"]).all() and a[3]["caption"] == b[3]["caption"]
    pa, pb = (open_dataset(p) for p in shapes_both)
    assert shapes_eval_captions(pa, "test", 8) == shapes_eval_captions(pb, "test", 8)
    assert len(shapes_eval_captions(pa, "test", 8)) == 8
