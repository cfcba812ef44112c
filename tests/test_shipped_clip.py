"""The in-domain CLIP shipped inside the package (ratlip_cli/assets/in-domain-clip/): it is the file
`ratlip pretrain-clip shapes` builds for the default shapes dataset, it loads, it retrieves as its
record says, and it is used only for that dataset and those settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ratlip_cli import clip_pretrain
from ratlip_cli.config import resolve_config
from ratlip_cli.files import sha256_file
from ratlip_cli.train.loop import ensure_dataset
from ratlip_cli.weights import load_clip

SHIPPED = sorted(clip_pretrain.SHIPPED_FOLDER.glob("*.safetensors"))


@pytest.fixture(scope="module")
def shapes_cfg(tmp_path_factory):
    """The shapes preset on a freshly generated default shapes dataset (seconds)."""
    cfg = resolve_config("shapes", overrides=[f"data.root={tmp_path_factory.mktemp('shipped') / 'shapes'}"])
    ensure_dataset(cfg)
    return cfg


def _record(path):
    return json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))


def test_one_file_is_shipped_with_its_provenance_and_the_preset_names_it(shapes_cfg):
    assert len(SHIPPED) == 1
    record = _record(SHIPPED[0])
    assert record["provenance"]["sha256"] == sha256_file(SHIPPED[0])
    assert "ratlip pretrain-clip shapes" in record["provenance"]["command"]
    # the shapes preset's settings key is the shipped file's: a change to clip.pretrain's defaults or
    # the preset makes this fail (rebuild with the command in the record, then ship the new file)
    assert clip_pretrain.in_domain_clip_path(shapes_cfg).name == SHIPPED[0].name
    assert record["settings"]["key"] in SHIPPED[0].name


def test_shipped_clip_loads_and_retrieves_as_recorded(shapes_cfg, one_thread):
    record = _record(SHIPPED[0])
    model, tokenizer = load_clip(shapes_cfg.clip.arch, str(SHIPPED[0]))
    model.eval().requires_grad_(False)
    split = clip_pretrain._Split(shapes_cfg.data.root, "test", 64)
    assert split.fingerprint == record["fingerprints"]["test"]
    rates = clip_pretrain.retrieval_report(model, tokenizer, split, "shapes")
    one_image = 1.0 / len(split.keys)
    # the record's rates (shape 0.888 on AMD EPYC); another CPU's kernels may flip an image or two
    for key, value in record["retrieval"].items():
        assert abs(rates[key] - value) <= 2 * one_image + 1e-9, (key, rates[key], value)
    assert rates["attr_shape"] > 0.85 and rates["attr_colour"] >= 0.99 and rates["attr_background"] >= 0.99


def test_ensure_uses_the_shipped_file_without_pretraining(shapes_cfg, monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("pretrained although a matching file is shipped")

    monkeypatch.setattr(clip_pretrain, "pretrain_clip", refuse)
    path = clip_pretrain.ensure_in_domain_clip(shapes_cfg, quiet=True)
    assert path == clip_pretrain.in_domain_clip_path(shapes_cfg) and path.parent.parent == Path(shapes_cfg.data.root)
    assert path.read_bytes() == SHIPPED[0].read_bytes()
    assert json.loads(path.with_suffix(".json").read_text())["retrieval"] == _record(SHIPPED[0])["retrieval"]


def test_shipped_file_is_not_used_for_other_settings_or_data(shapes_cfg, tmp_path):
    other = resolve_config("shapes", overrides=[f"data.root={shapes_cfg.data.root}", "clip.pretrain.lr=0.002"])
    assert clip_pretrain.shipped_in_domain_clip(other) is None  # another settings key
    assert clip_pretrain.shipped_in_domain_clip(shapes_cfg) == SHIPPED[0]
    smaller = resolve_config("shapes", overrides=[f"data.root={tmp_path / 'shapes'}"])
    from ratlip_cli.data import generate_shapes

    generate_shapes(tmp_path / "shapes", size=64, train_per_combo=1, test_per_combo=1, novel_per_combo=1)
    assert clip_pretrain.shipped_in_domain_clip(smaller) is None  # same name and settings, other content
