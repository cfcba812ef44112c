"""`ratlip eval` end to end with tiny parts: a prepared dataset in tmp_path, random-tiny features,
the random tiny eval CLIP, and a stub generator with the LoadedGenerator interface."""

from __future__ import annotations

import csv
import importlib.util
import json
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ratlip_cli import evaluate
from ratlip_cli.cli import app
from ratlip_cli.config import resolve_config, save_config
from ratlip_cli.data.prepared import write_prepared
from ratlip_cli.data.raw import RawItem, ScanNotes, ScanResult
from ratlip_cli.evaluate import EvalOptions, NOT_FID_MARK, load_test_split, plan_captions, run_eval_command
from ratlip_cli.metrics import features as features_mod
from ratlip_cli.metrics.clip_score import RANDOM_CLIP_NOTE

runner = CliRunner()
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
METRICS = ("fid", "kid_x1e3", "kid_std_x1e3", "clip_score", "r_precision")
LoadedGenerator = namedtuple("LoadedGenerator", "generator backbone tokenizer cfg")


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A prepared dataset: 8 test images (40x32, centre-cropped by eval) with 3 captions each, 2 train."""
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    items = []
    for i in range(10):
        arr = np.zeros((32, 40, 3), dtype=np.uint8) + rng.integers(0, 256, 3, dtype=np.uint8)
        arr[8:24, 12:28] = rng.integers(0, 256, 3, dtype=np.uint8)
        arr = np.clip(arr.astype(int) + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(raw / f"img{i}.png")
        colour = COLOURS[i % len(COLOURS)]
        captions = [f"a {colour} square number {i}", f"picture {i} of a {colour} box", f"{colour} block {i}"]
        split = "test" if i < 8 else "train"
        items.append(RawItem(key=f"img{i}", split=split, captions=captions, src=raw / f"img{i}.png"))
    out = tmp_path / "data"
    write_prepared(out, "folder", raw, ScanResult(items, ScanNotes()), size=32, image_format="png")
    return out


class StubGenerator(torch.nn.Module):
    """G(z, s) -> unbounded (B, 3, 32, 32), deterministic per sample."""

    def __init__(self, z_dim: int, emb_dim: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(z_dim + emb_dim, 3 * 8 * 8)

    def forward(self, z, s):
        x = self.fc(torch.cat([z, s], dim=1)).view(-1, 3, 8, 8)
        return 2.0 * torch.nn.functional.interpolate(x, size=32, mode="nearest")


class StubBackbone:
    def __init__(self, clip_model) -> None:
        self.clip = clip_model

    def encode_text(self, tokens):
        return self.clip.encode_text(tokens), None


@pytest.fixture
def run_dir(tmp_path, dataset, tiny_clip, monkeypatch) -> Path:
    """A run folder holding config.yaml; `load_generator` is replaced by the stub generator."""
    cfg = resolve_config(
        "tiny", overrides=[f"data.root={dataset}", f"eval.cache_dir={tmp_path / 'cache'}", "eval.batch_size=6"]
    )
    run = tmp_path / "runs" / "stub"
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    model, tokenizer = tiny_clip
    loaded = LoadedGenerator(StubGenerator(cfg.model.z_dim, 32), StubBackbone(model), tokenizer, cfg)
    monkeypatch.setattr(evaluate, "load_weights", lambda path, device, which=None: loaded)
    return run


def _folder_cfg(tmp_path):
    return resolve_config("tiny", overrides=[f"eval.cache_dir={tmp_path / 'cache'}", "eval.batch_size=6"])


def test_test_split_and_caption_plan(dataset):
    split = load_test_split(dataset)
    assert split.keys == [f"img{i}" for i in range(8)] and all(len(c) == 3 for c in split.captions)
    plan = plan_captions(split, passes=4, num=0, seed=1)
    assert len(plan) == 32 and plan == plan_captions(split, 4, 0, seed=1)
    for i, caps in enumerate(split.captions):  # each image once per pass; 4 passes cover its 3 captions
        assert sum(c in caps for c in plan) == 4 and set(caps) <= set(plan)
    assert plan_captions(split, 4, num=5, seed=1) == plan[:5]
    texts, excluded = split.pool()
    assert len(texts) == 24 and len(excluded["red block 0"]) == 3


def test_run_mode_equals_folder_mode_on_the_same_images(tmp_path, dataset, run_dir):
    gen = tmp_path / "generated"
    opts = EvalOptions(device="cpu", seed=3, save_images=gen, progress=False)
    row = run_eval_command(run_dir, None, None, {"eval.num": 14}, opts)
    assert row["num_images"] == 14 and row["feature_extractor"] == NOT_FID_MARK
    assert row["image_size"] == 32 and row["ref_images"] == 8 and row["split"] == "test"
    assert len(list(gen.glob("*.png"))) == 14 and (gen / "captions.csv").is_file()
    assert all(np.isfinite(row[k]) for k in METRICS) and row["fid"] > 0

    folder_opts = EvalOptions(dataset=str(dataset), device="cpu", seed=3, progress=False, out_csv=tmp_path / "f.csv")
    folder = run_eval_command(None, gen, gen / "captions.csv", {}, folder_opts, base_cfg=_folder_cfg(tmp_path))
    for key in METRICS + ("r_precision_candidates",):
        assert folder[key] == pytest.approx(row[key], rel=1e-9, abs=1e-9), key
    for key in ("ref_cache", "feature_weights", "eval_clip"):  # strings: pytest >= 9.2 refuses approx on them
        assert isinstance(row[key], str) and folder[key] == row[key], key

    lines = list(csv.DictReader(open(run_dir / "eval.csv")))
    assert len(lines) == 1 and lines[0]["feature_extractor"] == NOT_FID_MARK
    for field in ("num_images", "fid_mode", "feature_weights", "eval_clip", "dataset", "split", "seed", "time"):
        assert lines[0][field] != "", field


def test_reference_cache_is_reused_and_keyed(tmp_path, dataset, run_dir):
    opts = EvalOptions(device="cpu", progress=False)
    run_eval_command(run_dir, None, None, {"eval.num": 6}, opts)
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and not cached[0].name.endswith(".tmp")
    name = cached[0].name
    assert "-test-32px-clean-randomtiny-s0-d16.npz" in name and name.startswith("data-")
    stamp = cached[0].stat().st_mtime_ns
    run_eval_command(run_dir, None, None, {"eval.num": 6}, opts)
    assert cached[0].stat().st_mtime_ns == stamp
    run_eval_command(run_dir, None, None, {"eval.num": 6}, EvalOptions(device="cpu", progress=False, ref_size=24))
    assert len(list((tmp_path / "cache").iterdir())) == 2  # another reference size, another file
    assert len(list(csv.DictReader(open(run_dir / "eval.csv")))) == 3


def test_cli_folder_mode_json_and_loud_random_tiny(tmp_path, dataset):
    images = tmp_path / "imgs"
    images.mkdir()
    split = load_test_split(dataset)
    rows = []
    for i, (path, caps) in enumerate(zip(split.paths, split.captions)):
        Image.open(path).convert("RGB").resize((32, 32)).save(images / f"{i}.png")
        rows.append((f"{i}.png", caps[0]))
    with open(images / "captions.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("file", "caption"), *rows])
    args = ["eval", "--images", str(images), "--captions", str(images / "captions.csv"), "--dataset", str(dataset)]
    args += ["--preset", "tiny", "--set", f"eval.cache_dir={tmp_path / 'cache'}"]
    args += ["--device", "cpu", "--json", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["feature_extractor"] == NOT_FID_MARK and data["num_images"] == 8
    assert "NOT Inception" in result.stderr and "NOT FID" in result.stderr
    # the random evaluation CLIP is flagged in the row (CSV/JSON) and next to both CLIP metrics
    assert data["clip_metrics_note"] == RANDOM_CLIP_NOTE
    table = " ".join(result.stderr.split())
    assert table.count("RANDOM CLIP") >= 2 and "meaningless" in table
    # the real test images against themselves (centre-cropped and resized the same way): FID ~ 0
    assert data["fid"] < 1.0


def _invoke(args):
    result = runner.invoke(app, ["eval", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    return result.output


def test_cli_errors_are_one_line(tmp_path, dataset, monkeypatch):
    assert "either --run" in _invoke([])
    assert "--num or --passes" in _invoke(["--run", str(tmp_path), "--num", "3", "--passes", "2"])
    folder = tmp_path / "imgs"
    folder.mkdir()
    folder_args = ["--images", str(folder), "--captions", str(folder / "c.csv"), "--dataset", str(dataset)]
    assert "captions file not found" in _invoke(folder_args)
    (folder / "c.csv").write_text("name,text\na.png,x\n")
    assert "columns file,caption" in _invoke(folder_args)
    (folder / "c.csv").write_text("file,caption\na.png,a red box\n")
    assert "image not found" in _invoke(folder_args)
    assert "--dataset DIR is required" in _invoke(folder_args[:4])
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    monkeypatch.delenv("RATLIP_INCEPTION", raising=False)
    monkeypatch.setattr(features_mod, "inception_candidates", lambda path="": [tmp_path / "absent.pt"])
    monkeypatch.setattr(features_mod, "_online", lambda *a, **k: False)
    out = _invoke([*folder_args, "--feature-extractor", "inception"])
    assert "--inception FILE" in out and "RATLIP_INCEPTION" in out


@pytest.mark.skipif(
    importlib.util.find_spec("ratlip_cli.export") is None,
    reason="ratlip_cli/export.py (load_generator) is missing: run mode on a real exported generator is untested",
)
def test_run_mode_with_a_real_exported_generator(tmp_path, dataset):
    """An (untrained) tiny RATLIP generator exported like a run, loaded by the real `load_generator`."""
    from ratlip_cli.export import export_generator, save_clip_weights
    from ratlip_cli.models.ratlip.build import build_models
    from ratlip_cli.weights import load_clip

    cfg = resolve_config("tiny", overrides=[f"data.root={dataset}", f"eval.cache_dir={tmp_path / 'cache'}"])
    run = tmp_path / "runs" / "tiny"
    torch.manual_seed(0)
    clip_model, _ = load_clip(cfg.clip.arch, cfg.clip.weights)
    models = build_models(cfg, clip_model)
    save_clip_weights(clip_model, run / "clip.safetensors")
    export_generator(models.generator, cfg, run / "export", clip_file=run / "clip.safetensors", raw=models.generator)
    save_config(cfg, run / "config.yaml")

    gen = tmp_path / "generated"
    args = ["eval", "--run", str(run), "--num", "10", "--device", "cpu", "--save-images", str(gen), "--json", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    from_run = json.loads(result.stdout.strip().splitlines()[-1])
    assert from_run["mode"] == "run" and from_run["num_images"] == 10 and from_run["image_size"] == cfg.model.image_size
    assert from_run["generator"] == "ema"  # the tiny preset's eval.generator
    raw_args = ["eval", "--run", str(run), "--num", "10", "--device", "cpu", "--generator", "raw", "--json", "--quiet"]
    result = runner.invoke(app, raw_args)
    assert result.exit_code == 0, result.output
    from_raw = json.loads(result.stdout.strip().splitlines()[-1])
    assert from_raw["generator"] == "raw" and from_raw["clip_score"] == pytest.approx(from_run["clip_score"])
    assert [r["generator"] for r in csv.DictReader(open(run / "eval.csv"))] == ["ema", "raw"]

    args = ["eval", "--images", str(gen), "--captions", str(gen / "captions.csv"), "--dataset", str(dataset)]
    args += ["--preset", "tiny", "--set", f"eval.cache_dir={tmp_path / 'cache'}"]
    args += ["--device", "cpu", "--json", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    from_folder = json.loads(result.stdout.strip().splitlines()[-1])
    assert from_folder["generator"] == ""  # folder mode: the images were given
    for key in METRICS:
        assert from_folder[key] == pytest.approx(from_run[key], rel=1e-9, abs=1e-9), key
    assert (run / "eval.csv").is_file()
