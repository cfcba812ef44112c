"""Both generators are exported (EMA and raw); `sample` and `eval` pick one with --generator; the paper
presets evaluate the raw one; eval rows say which."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from ratlip_cli.cli import app
from ratlip_cli.config import resolve_config, save_config
from ratlip_cli.errors import RatlipError
from ratlip_cli.export import RAW_WEIGHTS_FILE, WEIGHTS_FILE, export_generator, load_generator, save_clip_weights
from ratlip_cli.models.ratlip.build import build_models
from ratlip_cli.models.trainable import trainable_parameters
from ratlip_cli.weights import load_clip

runner = CliRunner()


@pytest.fixture
def run(tmp_path):
    cfg = resolve_config("tiny")
    torch.manual_seed(0)
    clip_model, _ = load_clip(cfg.clip.arch, "random")
    raw = build_models(cfg, clip_model).generator
    ema = copy.deepcopy(raw)
    with torch.no_grad():
        for p in trainable_parameters(raw):
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path / "runs" / "r"
    save_clip_weights(clip_model, folder / "clip.safetensors")
    export_generator(ema, cfg, folder / "export", clip_file=folder / "clip.safetensors", raw=raw)
    save_config(cfg, folder / "config.yaml")
    return folder, cfg


def test_both_exported_and_loaded_by_name(run):
    folder, cfg = run
    assert (folder / "export" / WEIGHTS_FILE).is_file() and (folder / "export" / RAW_WEIGHTS_FILE).is_file()
    doc = json.loads((folder / "export" / "generator.json").read_text())
    assert doc["generators"] == {"ema": WEIGHTS_FILE, "raw": RAW_WEIGHTS_FILE}
    z, s = torch.randn(2, cfg.model.z_dim), torch.randn(2, 32)
    ema, raw = load_generator(folder, "cpu", "ema"), load_generator(folder, "cpu", "raw")
    assert (ema.which, raw.which) == ("ema", "raw")
    with torch.no_grad():
        assert (ema.generator(z, s) - raw.generator(z, s)).abs().max() > 1e-3
    assert load_generator(folder, "cpu").which == cfg.eval.generator == "ema"  # tiny preset default
    assert load_generator(folder / "export" / RAW_WEIGHTS_FILE, "cpu").which == "raw"
    with pytest.raises(RatlipError, match="is the raw generator"):
        load_generator(folder / "export" / RAW_WEIGHTS_FILE, "cpu", "ema")
    (folder / "export" / RAW_WEIGHTS_FILE).unlink()  # an export from before the raw file existed
    with pytest.raises(RatlipError, match="no raw generator"):
        load_generator(folder, "cpu", "raw")


def test_paper_presets_evaluate_raw():
    for preset in ("cub", "oxford", "celeba-tiny", "coco"):
        assert resolve_config(preset).eval.generator == "raw", preset
    for preset in ("tiny", "shapes"):
        assert resolve_config(preset).eval.generator == "ema", preset
    with pytest.raises(RatlipError, match="eval.generator"):
        resolve_config("tiny", overrides=["eval.generator=average"])


def test_sample_and_eval_take_generator(run, tmp_path):
    folder, _cfg = run
    outs = {}
    for which in ("ema", "raw"):
        out = tmp_path / f"{which}.png"
        result = runner.invoke(app, ["sample", "a red circle", "--run", str(folder), "--n", "2", "--out", str(out),
                                     "--generator", which, "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert f"({which} generator)" in result.output
        outs[which] = out.read_bytes()
    assert outs["ema"] != outs["raw"]
    result = runner.invoke(app, ["sample", "a red circle", "--run", str(folder), "--generator", "mean"])
    assert result.exit_code == 2 and "choose ema or raw" in result.output
