"""`ratlip pretrain-clip` and clip.weights=in-domain, on a tiny shapes dataset and the tiny CLIP."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ratlip_cli import clip_pretrain
from ratlip_cli.cli import app
from ratlip_cli.config import resolve_config
from ratlip_cli.data import generate_shapes
from ratlip_cli.errors import RatlipError
from ratlip_cli.weights import load_clip

runner = CliRunner()
SETS = ["clip.pretrain.steps=4", "clip.pretrain.batch_size=8", "clip.pretrain.warmup_steps=2",
        "clip.pretrain.checkpoint_every=2"]  # fmt: skip


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain") / "shapes"
    generate_shapes(root, size=32, train_per_combo=1, test_per_combo=1, novel_per_combo=1)
    return root


def _cfg(root, *extra):
    return resolve_config("tiny", overrides=[f"data.root={root}", *SETS, *extra])


def test_pretrain_writes_loadable_weights_and_a_report(data_root, tmp_path, one_thread):
    cfg = _cfg(data_root)
    out = tmp_path / "clip.safetensors"
    report = clip_pretrain.pretrain_clip(cfg, out, show=False)
    assert report.steps == 4 and report.images_seen == 32
    keys = {"i2t_top1", "t2i_top1", "attr_colour", "attr_shape", "attr_background", "attr_size", "attr_all"}
    assert set(report.retrieval) == keys and all(0.0 <= v <= 1.0 for v in report.retrieval.values())
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["retrieval"] == report.retrieval and doc["arch"] == "ratlip-tiny"
    model, _ = load_clip("ratlip-tiny", str(out))  # what clip.weights=FILE does
    saved = load_file(str(out))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    torch.manual_seed(0)
    fresh, _ = load_clip("ratlip-tiny", "random")
    assert not torch.equal(fresh.visual.conv1.weight, saved["visual.conv1.weight"])  # it trained
    assert not (out.with_suffix(".work") / "ckpt.pt").exists()  # the work checkpoint is cleaned up


def test_interrupted_pretraining_resumes_bit_for_bit(data_root, tmp_path, monkeypatch, one_thread):
    cfg = _cfg(data_root)
    whole = tmp_path / "whole.safetensors"
    clip_pretrain.pretrain_clip(cfg, whole, show=False)

    resumed = tmp_path / "resumed.safetensors"
    real_lr = clip_pretrain._lr

    def stop_at_step_3(step, pcfg):
        if step == 3:
            raise KeyboardInterrupt
        return real_lr(step, pcfg)

    monkeypatch.setattr(clip_pretrain, "_lr", stop_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        clip_pretrain.pretrain_clip(cfg, resumed, show=False)
    ckpt = torch.load(resumed.with_suffix(".work") / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 2 and not resumed.exists()
    monkeypatch.setattr(clip_pretrain, "_lr", real_lr)
    clip_pretrain.pretrain_clip(cfg, resumed, show=False)
    a, b = load_file(str(whole)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_in_domain_cache_path_depends_on_the_settings(data_root):
    a = clip_pretrain.in_domain_clip_path(_cfg(data_root))
    b = clip_pretrain.in_domain_clip_path(_cfg(data_root, "clip.pretrain.lr=0.002"))
    c = clip_pretrain.in_domain_clip_path(_cfg(data_root, "clip.pretrain.checkpoint_every=50"))
    assert a.parent == data_root / "in-domain-clip" and a.name.startswith("ratlip-tiny-") and a.suffix == ".safetensors"
    assert a != b and a == c  # checkpointing does not change the weights


def test_cli_pretrain_clip_prints_retrieval(data_root, tmp_path):
    out = tmp_path / "cli.safetensors"
    sets = [x for s in [f"data.root={data_root}", *SETS] for x in ("--set", s)]
    result = runner.invoke(app, ["pretrain-clip", "tiny", *sets, "--out", str(out)])
    assert result.exit_code == 0, result.output
    for word in ("image -> text", "text -> image", "colour", "shape", "background", "all four"):
        assert word in result.output
    assert out.is_file()
    bad = runner.invoke(app, ["pretrain-clip", "tiny", *sets, "--out", str(tmp_path / "x.pt")])
    assert bad.exit_code == 2 and "--out must name a .safetensors file" in bad.output


def test_eval_in_domain_needs_the_same_arch(data_root):
    from ratlip_cli.evaluate import _eval_tools

    cfg = _cfg(data_root, "eval.clip_weights=in-domain", "eval.clip_arch=ratlip-shapes",
               "eval.feature_extractor=random-tiny")  # fmt: skip
    with pytest.raises(RatlipError, match="set eval.clip_arch=ratlip-tiny"):
        _eval_tools(cfg, torch.device("cpu"))


def test_train_with_in_domain_clip_builds_caches_and_exports_it(data_root, tmp_path, one_thread):
    from ratlip_cli.export import load_generator
    from ratlip_cli.train import train

    cfg = _cfg(data_root, "clip.weights=in-domain", f"train.runs_dir={tmp_path / 'runs'}", "train.name=r",
               "train.max_steps=1", "train.sample_every=0", "train.checkpoint_every=0")  # fmt: skip
    cached = clip_pretrain.in_domain_clip_path(cfg)
    assert not cached.exists()
    train(cfg)
    assert cached.is_file() and cached.with_suffix(".json").is_file()  # built on first use, cached
    run_clip = load_file(str(tmp_path / "runs" / "r" / "clip.safetensors"))
    want = load_file(str(cached))
    assert run_clip.keys() == want.keys() and all(torch.equal(run_clip[k], want[k]) for k in want)
    loaded = load_generator(tmp_path / "runs" / "r", "cpu")  # the export rebuilds the same frozen CLIP
    assert torch.equal(loaded.backbone.model.state_dict()["visual.conv1.weight"], want["visual.conv1.weight"])
    stamp = cached.stat().st_mtime_ns
    train(_cfg(data_root, "clip.weights=in-domain", f"train.runs_dir={tmp_path / 'runs'}", "train.name=r2",
               "train.max_steps=1", "train.sample_every=0", "train.checkpoint_every=0"))  # fmt: skip
    assert cached.stat().st_mtime_ns == stamp  # reused, not retrained
