"""`ratlip eval` under torchrun (2 CPU processes, gloo) gives the numbers of one process, in run mode
(generation split across processes) and folder mode, with reference features extracted by both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as tdist
from PIL import Image

from ratlip_cli.config import resolve_config, save_config
from ratlip_cli.data.prepared import write_prepared
from ratlip_cli.data.raw import RawItem, ScanNotes, ScanResult

METRICS = ("fid", "kid_x1e3", "kid_std_x1e3", "clip_score", "r_precision")
pytestmark = pytest.mark.skipif(not tdist.is_available() or not tdist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def _dataset(root: Path) -> Path:
    """13 test images (5 batches of 3 reference images: uneven shares) and 2 train images, 3 captions each."""
    raw = root / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    items = []
    for i in range(15):
        arr = np.clip(rng.integers(0, 256, 3) + rng.integers(-30, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(raw / f"img{i}.png")
        caps = [f"a picture number {i}", f"image {i} of something", f"thing {i}"]
        items.append(RawItem(key=f"img{i}", split="test" if i < 13 else "train", captions=caps, src=raw / f"img{i}.png"))
    out = root / "data"
    write_prepared(out, "folder", raw, ScanResult(items, ScanNotes()), size=32, image_format="png")
    return out


def _run(root: Path, data: Path) -> Path:
    from ratlip_cli.export import export_generator, save_clip_weights
    from ratlip_cli.models.ratlip.build import build_models
    from ratlip_cli.weights import load_clip

    cfg = resolve_config("tiny", overrides=[f"data.root={data}"])
    run = root / "runs" / "tiny"
    torch.manual_seed(0)
    clip_model, _ = load_clip(cfg.clip.arch, cfg.clip.weights)
    models = build_models(cfg, clip_model)
    save_clip_weights(clip_model, run / "clip.safetensors")
    export_generator(models.generator, cfg, run / "export", clip_file=run / "clip.safetensors")
    save_config(cfg, run / "config.yaml")
    return run


def _eval(args: list[str], processes: int) -> dict:
    # `--` ends torchrun's own options (it would read `--run` as an abbreviation of its `--run-path`).
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                "-m", "ratlip_cli", "--"]
    cmd = (launcher if processes > 1 else [sys.executable, "-m", "ratlip_cli"]) + ["eval", *args, "--json", "--quiet"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 1, proc.stdout  # printed once, by rank 0
    return rows[0]


def test_two_gloo_processes_give_the_numbers_of_one(tmp_path):
    data = _dataset(tmp_path)
    run = _run(tmp_path, data)
    common = ["--device", "cpu", "--num", "22", "--batch-size", "3", "--set", "eval.kid_subset_size=6"]

    single = _eval(["--run", str(run), *common, "--set", f"eval.cache_dir={tmp_path / 'c1'}",
                    "--save-images", str(tmp_path / "gen")], 1)
    double = _eval(["--run", str(run), *common, "--set", f"eval.cache_dir={tmp_path / 'c2'}"], 2)
    assert single["num_images"] == double["num_images"] == 22 and single["ref_images"] == double["ref_images"] == 13
    for key in METRICS:
        assert double[key] == single[key], key
    assert single["fid"] > 0 and 0 < single["r_precision_candidates"]
    rows = (run / "eval.csv").read_text(encoding="utf-8").strip().splitlines()
    assert len(rows) == 3  # header + one row per evaluation: rank 1 appended nothing

    # folder mode, 2 processes, on the saved images (same batches as run mode): the same numbers again
    folder = ["--images", str(tmp_path / "gen"), "--captions", str(tmp_path / "gen" / "captions.csv"),
              "--dataset", str(data), "--preset", "tiny", "--device", "cpu", "--batch-size", "3",
              "--set", "eval.kid_subset_size=6", "--set", f"eval.cache_dir={tmp_path / 'c2'}"]
    from_folder = _eval(folder, 2)
    for key in METRICS:
        assert from_folder[key] == pytest.approx(single[key], rel=1e-9, abs=1e-9), key
