"""What `ratlip train` shows while it runs: TensorBoard curves and grids that a resumed run continues
without a step twice, environment.json, and the budget that really stops the run with an ETA."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ratlip_cli.cli import app
from ratlip_cli.config import resolve_config
from ratlip_cli.train.loop import resume_config, train
from ratlip_cli.train.run import read_metrics
from ratlip_cli.train.tensorboard import read_scalars

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from ratlip_cli.data import generate_shapes

    root = tmp_path_factory.mktemp("shapes32")
    generate_shapes(root, size=32, train_per_combo=1, test_per_combo=1, novel_per_combo=1)
    return root


def test_crashed_and_resumed_run_has_one_curve_point_per_step(tmp_path, data_root):
    cfg = resolve_config("tiny", overrides=[f"train.runs_dir={tmp_path}", f"data.root={data_root}", "train.name=tb",
                                            "train.max_steps=6", "train.sample_every=3", "train.checkpoint_every=2"])

    class Crash(Exception):
        pass

    def crash_at_5(step):
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, on_step=crash_at_5)
    run = tmp_path / "tb"
    train(resume_config(run, overrides=["train.max_steps=8"]), resume=run)

    curves = read_scalars(run / "tensorboard")
    rows = {int(r["step"]): r for r in read_metrics(run / "metrics.csv")}
    for column in ("d_loss", "d_real", "d_fake", "d_mis", "ma_gp", "g_loss", "g_clip"):
        points = curves[f"loss/{column}"]
        assert [s for s, _ in points] == list(range(1, 9)), column
        for step, value in points:
            assert value == pytest.approx(float(rows[step][column]), rel=1e-5, abs=1e-6), (column, step)
    assert [s for s, _ in curves["speed/images_per_s"]] == list(range(1, 9))
    assert dict(curves["lr/opt_g"])[8] == pytest.approx(cfg.train.lr_g)
    assert dict(curves["lr/opt_d"])[8] == pytest.approx(cfg.train.lr_d)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert sorted({e.step for e in acc.Images("samples")}) == [0, 3, 6, 8]
    captions = acc.Tensors("samples/captions/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert captions.count("[train]") > 0 and captions.count("[test]") > 0

    env = json.loads((run / "environment.json").read_text(encoding="utf-8"))
    assert env["device"] == "cpu" and env["processes"] == "1" and "torch" in env


def test_plain_log_counts_towards_the_budget_that_stops_the_run(tmp_path, data_root):
    args = ["train", "tiny", "--set", f"train.runs_dir={tmp_path}", "--set", f"data.root={data_root}",
            "--set", "train.name=budget", "--set", "train.max_steps=0", "--set", "train.epochs=1000",
            "--set", "train.max_minutes=0.02", "--set", "train.sample_every=0", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("step ")]
    assert lines and all("(train.max_minutes=0.02)" in ln and "ETA " in ln for ln in lines)
    assert all(re.match(r"step \d+/~\d+ \|", ln) for ln in lines)
    assert "/24000" not in result.output  # 1000 epochs x 24 steps is not what stops this run
    assert "reached train.max_minutes=0.02" in result.output
