"""Reproducible exports: byte-identical weights for identical runs, sha256 recorded and verified."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ratlip_cli.cli import app
from ratlip_cli.config import resolve_config
from ratlip_cli.errors import RatlipError
from ratlip_cli.export import load_generator
from ratlip_cli.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, data_root) -> tuple[Path, Path]:
    """Two tiny runs with the same seed and settings, differing only in their names."""
    tmp = tmp_path_factory.mktemp("export")
    runs = []
    for name in ("a", "b"):
        cfg = resolve_config("tiny", overrides=[f"train.runs_dir={tmp / 'runs'}", f"data.root={data_root}",
                                                f"train.name={name}", "train.max_steps=2", "train.sample_every=0"])
        runs.append(train(cfg).run_dir)
    return runs[0], runs[1]


def test_identical_runs_give_byte_identical_weights(two_runs):
    a, b = two_runs
    for rel in ("export/generator.safetensors", "export/generator_raw.safetensors", "clip.safetensors"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_export_json_records_the_weights_sha256(two_runs):
    run = two_runs[0]
    doc = json.loads((run / "export" / "generator.json").read_text())
    data = (run / "export" / "generator.safetensors").read_bytes()
    assert doc["weights_sha256"]["generator.safetensors"] == hashlib.sha256(data).hexdigest()
    raw = run / "export" / "generator_raw.safetensors"
    if raw.is_file():
        assert doc["weights_sha256"]["generator_raw.safetensors"] == hashlib.sha256(raw.read_bytes()).hexdigest()


def test_changed_weights_are_refused_by_load_sample_and_eval(two_runs, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(two_runs[0], run)
    weights = run / "export" / "generator.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(RatlipError, match="does not match generator.json"):
        load_generator(run)
    result = CliRunner().invoke(app, ["sample", "a red circle", "--run", str(run), "--n", "1",
                                      "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 2 and "sha256" in result.output and "Traceback" not in result.output
    assert [ln for ln in result.output.splitlines() if ln.startswith("error:")] == result.output.splitlines()[-1:]
    assert not (tmp_path / "g.png").exists()
    result = CliRunner().invoke(app, ["eval", "--run", str(run), "--num", "4", "--quiet"])
    assert result.exit_code == 2 and "sha256" in result.output and "Traceback" not in result.output
