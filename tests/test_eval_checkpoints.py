"""`ratlip eval --run R --checkpoints last|all|best`: every retained checkpoint scored with the run's
protocol, and the best one (lowest FID) exported with the metric that chose it."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ratlip_cli.cli import app
from ratlip_cli.config import resolve_config
from ratlip_cli.export import load_generator
from ratlip_cli.train import train
from ratlip_cli.train.checkpoint import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_root):
    root = tmp_path_factory.mktemp("ckpt-eval")
    cfg = resolve_config("tiny", overrides=[f"train.runs_dir={root / 'runs'}", f"data.root={data_root}",
                                            "train.name=r", "train.max_steps=3", "train.checkpoint_every=1",
                                            "train.keep_checkpoints=3", "train.sample_every=0",
                                            f"eval.cache_dir={root / 'cache'}"])
    return train(cfg).run_dir


def _eval(run, *args):
    result = runner.invoke(app, ["eval", "--run", str(run), "--num", "16", "--device", "cpu", "--quiet", *args])
    assert result.exit_code == 0, result.output
    return result


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_all_scores_each_checkpoint_and_the_last_equals_the_export(run, tmp_path):
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [1, 2, 3]
    _eval(run, "--out-csv", str(tmp_path / "export.csv"))
    _eval(run, "--checkpoints", "all", "--out-csv", str(tmp_path / "all.csv"))
    export_row, rows = _rows(tmp_path / "export.csv")[0], _rows(tmp_path / "all.csv")
    assert [(r["checkpoint"], int(r["step"])) for r in rows] == [
        ("ckpt-00000001.pt", 1), ("ckpt-00000002.pt", 2), ("ckpt-00000003.pt", 3)]
    assert len({r["fid"] for r in rows}) == 3  # different weights, different scores
    # The export is the final step's EMA: the same images, so the same numbers.
    for key in ("fid", "kid_x1e3", "clip_score", "r_precision"):
        assert float(rows[-1][key]) == pytest.approx(float(export_row[key]), rel=1e-9), key
    assert all(r["protocol"] == export_row["protocol"] for r in rows)


def test_last_scores_only_the_newest(run, tmp_path):
    _eval(run, "--checkpoints", "last", "--out-csv", str(tmp_path / "last.csv"))
    assert [int(r["step"]) for r in _rows(tmp_path / "last.csv")] == [3]


def test_best_exports_the_lowest_fid_checkpoint_labelled(run, tmp_path):
    _eval(run, "--checkpoints", "best", "--out-csv", str(tmp_path / "best.csv"))
    rows = _rows(tmp_path / "best.csv")
    best = min(rows, key=lambda r: float(r["fid"]))
    label = json.loads((run / "export-best" / "selected.json").read_text())
    assert label["selected_by"] == "fid" and label["checkpoint"] == best["checkpoint"]
    assert label["value"] == pytest.approx(float(best["fid"])) and label["protocol"] == best["protocol"]
    state = load_checkpoint(run / "checkpoints" / best["checkpoint"])
    weights = load_file(str(run / "export-best" / "generator.safetensors"))
    for k, v in state["ema"].items():
        assert torch.equal(weights[k], v), k
    raw = load_file(str(run / "export-best" / "generator_raw.safetensors"))
    assert all(torch.equal(raw[k], v) for k, v in state["generator"].items())
    loaded = load_generator(run / "export-best")
    assert loaded.step == label["step"] == int(best["step"])


def test_bad_choices_are_one_line(run, tmp_path):
    result = runner.invoke(app, ["eval", "--run", str(run), "--checkpoints", "newest"])
    assert result.exit_code != 0 and "--checkpoints must be one of" in result.output
    result = runner.invoke(app, ["eval", "--run", str(tmp_path), "--checkpoints", "all"])
    assert result.exit_code != 0 and "no checkpoints" in result.output
    result = runner.invoke(app, ["eval", "--run", str(run), "--checkpoints", "all", "--save-images", str(tmp_path / "x")])
    assert result.exit_code != 0 and "--save-images" in result.output
