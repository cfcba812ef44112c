"""`ratlip ablate` on the tiny preset (CPU): the sweep's files, parameter counts, resuming, shards and
merging, refusals, and --params-only.

Every run is 2 steps of the tiny model on a small 32 px shapes dataset, evaluated on 16 images with
`random-tiny` features and the random tiny CLIP (numbers NOT meaningful; only their plumbing is
tested). Torch runs single-threaded here (see tests/test_train.py for why).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from ratlip_cli import ablate
from ratlip_cli.ablate import COLUMNS, NOT_FID_MARK, TIMING_COLUMNS, AblateOptions
from ratlip_cli.cli import app
from ratlip_cli.errors import RatlipError

runner = CliRunner()
HIDDENS = [0, 4, 8]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A small shapes dataset (96 train, 108 test images at 32 px) and an eval cache, shared by the module."""
    from ratlip_cli.data import generate_shapes

    root = tmp_path_factory.mktemp("ablate")
    generate_shapes(root / "data", size=32, train_per_combo=1, test_per_combo=1, novel_per_combo=1)
    return root


def sweep_args(workdir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "ablate", "tiny", "--hidden", ",".join(map(str, HIDDENS)), "--steps", "2", "--eval-num", "16",
        "--metrics", "cs,fid,kid,rp,shapes", "--out", str(out), "--quiet",
        "--set", f"data.root={workdir / 'data'}", "--set", f"eval.cache_dir={workdir / 'cache'}", *extra,
    ]  # fmt: skip


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def no_timing(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


@pytest.fixture(scope="module")
def sweep(workdir) -> tuple[Path, str]:
    """The unsharded tiny sweep (h = 0, 4, 8; seed 0)."""
    out = workdir / "full"
    result = runner.invoke(app, sweep_args(workdir, out))
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture
def no_training(monkeypatch):
    """Any training or evaluation fails the test."""

    def boom(*args, **kwargs):
        raise AssertionError("trained or evaluated although nothing was to do")

    monkeypatch.setattr(ablate, "train_run", boom)
    monkeypatch.setattr(ablate, "evaluate_cell", boom)


def test_sweep_writes_csv_plot_and_runs(sweep):
    out, output = sweep
    header, rows = read_csv(out / "ablation.csv")
    assert header == COLUMNS
    assert [int(r["h"]) for r in rows] == HIDDENS and {r["seed"] for r in rows} == {"0"}
    for r in rows:
        for col in ("clip_score", "fid", "kid_x1e3", "r_precision", "shapes_all", "train_img_per_s", "wall_s"):
            assert r[col] != "", col
        assert r["feature_extractor"] == NOT_FID_MARK  # random-tiny rows say so
        assert int(r["steps"]) == 2 and int(r["eval_images"]) == 16
        run = out / r["run"]
        assert (run / "export" / "generator.safetensors").is_file() and (run / "eval.csv").is_file()
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    spec = yaml.safe_load((out / "sweep.yaml").read_text())
    assert spec["spec_hash"] == rows[0]["sweep"] and spec["hidden"] == HIDDENS
    assert "RATLIP without RAT" in output and "GALIP" not in output and "NOT FID" in output


def test_parameter_counts_grow_with_h(sweep):
    from ratlip_cli.config import resolve_config
    from ratlip_cli.models.ratlip.params import param_table
    from ratlip_cli.weights import load_clip

    _, rows = read_csv(sweep[0] / "ablation.csv")
    assert [int(r["h"]) for r in rows] == sorted(int(r["h"]) for r in rows) and int(rows[0]["h"]) == 0
    rat = [int(r["rat_params"]) for r in rows]
    assert rat == sorted(set(rat)), rat  # strictly increasing, from 0
    for col in ("bridge_params", "generator_trainable", "trainable_params", "total_params"):
        values = [int(r[col]) for r in rows][1:]  # h > 0: RAT MLPs read h_t, so counts grow with h
        assert values == sorted(set(values)), col
    assert int(rows[0]["rat_params"]) == 0  # h = 0 is RATLIP without RAT: no recurrence at all
    assert all(r["generator"] == "ema" for r in rows)  # the tiny preset's eval.generator, recorded per row
    assert len({r["discriminator_trainable"] for r in rows}) == 1
    # The trained models' counts are the params table's.
    cfg = resolve_config("tiny")
    table = param_table(cfg, load_clip(cfg.clip.arch, "random")[0], HIDDENS)
    assert [int(r["trainable_params"]) for r in rows] == [t["trainable"] for t in table]


def test_rerun_trains_nothing(sweep, workdir, no_training):
    out, _ = sweep
    before = (out / "ablation.csv").read_text()
    result = runner.invoke(app, sweep_args(workdir, out))
    assert result.exit_code == 0, result.output
    assert "0 to train" in result.output
    assert (out / "ablation.csv").read_text() == before


def test_changed_setting_is_refused(sweep, workdir, no_training):
    out, _ = sweep
    for extra in (["--steps", "3"], ["--set", "train.lr_g=0.001"], ["--metrics", "cs"]):
        args = sweep_args(workdir, out)
        if extra[0] in args:  # replace the option's value
            i = args.index(extra[0])
            args[i + 1] = extra[1]
        else:
            args += extra
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "other settings" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, sweep_args(workdir, out, "--set", "model.rat.hidden=4"))
    assert result.exit_code == 2 and "--hidden" in result.output


def test_shards_merge_to_the_unsharded_rows(sweep, workdir):
    a, b, merged = workdir / "shard1", workdir / "shard2", workdir / "merged"
    for shard, out in (("1/2", a), ("2/2", b)):
        result = runner.invoke(app, sweep_args(workdir, out, "--shard", shard))
        assert result.exit_code == 0, result.output
    assert [int(r["h"]) for r in read_csv(a / "ablation.csv")[1]] == [0, 8]  # round robin over the grid
    assert [int(r["h"]) for r in read_csv(b / "ablation.csv")[1]] == [4]
    result = runner.invoke(app, ["ablate", "--merge", str(a), str(b), "--out", str(merged)])
    assert result.exit_code == 0, result.output
    header, rows = read_csv(merged / "ablation.csv")
    assert header == COLUMNS and (merged / "ablation.png").is_file()
    assert no_timing(rows) == no_timing(read_csv(sweep[0] / "ablation.csv")[1])


def test_merge_refuses_other_sweeps(sweep, workdir):
    other = workdir / "other"
    cfg = ablate.sweep_config(AblateOptions(preset="tiny", steps=5))
    ablate.write_sweep(other, ablate.sweep_spec(cfg, ["cs"]), {"hidden": [16], "seeds": [0]})
    result = runner.invoke(app, ["ablate", "--merge", str(sweep[0]), str(other), "--out", str(workdir / "m2")])
    assert result.exit_code == 2 and "differ" in result.output, result.output


def test_interrupted_run_resumes_from_its_checkpoint(workdir, capsys):
    from ratlip_cli.train import train

    out = workdir / "resume"
    opts = AblateOptions(
        preset="tiny", hiddens="8", steps=4, eval_num=8, metrics="shapes", out=out, progress=False,
        sets=[f"data.root={workdir / 'data'}", f"eval.cache_dir={workdir / 'cache'}"],
    )  # fmt: skip
    cell = ablate.cell_config(ablate.sweep_config(opts), out, 8, 0)

    def crash(step):
        if step == 2:  # just after the step-2 checkpoint
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        train(cell, on_step=crash)
    assert (out / "h8-s0" / "checkpoints" / "ckpt-00000002.pt").is_file()
    capsys.readouterr()
    assert ablate.run_ablation(opts) == 0
    assert "resuming run" in capsys.readouterr().out
    _, rows = read_csv(out / "ablation.csv")
    assert len(rows) == 1 and rows[0]["steps"] == "4" and rows[0]["shapes_all"] != ""
    logged = read_csv(out / "h8-s0" / "metrics.csv")[1]
    assert [r["step"] for r in logged] == ["1", "2", "3", "4"]  # continued, not restarted


def test_params_only_prints_without_training(sweep, no_training):
    result = runner.invoke(app, ["ablate", "tiny", "--params-only", "--hidden", "0,4,8"])
    assert result.exit_code == 0, result.output
    _, rows = read_csv(sweep[0] / "ablation.csv")
    assert "RATLIP without RAT" in result.output and "G release code" in result.output
    for r in rows:
        assert f"{int(r['trainable_params']):,}" in result.output


def test_grid_shards_and_option_errors():
    cells = ablate.grid([0, 4, 8, 16], [0, 1])
    shards = [ablate.shard_cells(cells, (i, 3)) for i in (1, 2, 3)]
    assert sorted(c for s in shards for c in s) == sorted(cells) and sum(map(len, shards)) == len(cells)
    for bad in ("0/2", "3/2", "x"):
        with pytest.raises(RatlipError):
            ablate.parse_shard(bad)
    with pytest.raises(RatlipError, match="twice"):
        ablate.parse_int_list("4,4", "--hidden")
    with pytest.raises(RatlipError, match="unknown metric"):
        ablate.parse_metrics("cs,is")
    with pytest.raises(RatlipError, match="one budget"):
        ablate.sweep_config(AblateOptions(preset="tiny", steps=2, minutes=1.0))


def test_table_and_plot_show_mean_and_std_across_seeds(tmp_path):
    rows = []
    for h, base in ((0, 10.0), (16, 12.0)):
        for seed, delta in ((0, -1.0), (1, 1.0)):
            rows.append({"h": h, "seed": seed, "trainable_params": 1000 + h, "clip_score": base + delta,
                         "fid": 50.0 - base, "feature_extractor": "inception"})
    summary = ablate.summarize(rows)
    assert summary[1]["clip_score"] == pytest.approx((12.0, 2**0.5))
    console = Console(width=200, record=True)
    console.print(ablate.results_table(rows, ["cs", "fid"], "t"))
    text = console.export_text()
    assert "12.00 ± 1.41" in text and "0 (RATLIP without RAT)" in text and "NOT FID" not in text
    ablate.plot_ablation(rows, ["cs", "fid"], tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "eval_clip, mark",
    [("ratlip-tiny random(seed 0)", "random CLIP: meaningless"),
     ("in-domain CLIP (shapes): ratlip-shapes x.safetensors sha256:abc", "in-domain CLIP (shapes)"),
     ("ViT-B-32-quickgelu openai", None)],
)  # fmt: skip
def test_table_and_plot_flag_the_evaluation_clip(tmp_path, monkeypatch, eval_clip, mark):
    rows = [{"h": h, "seed": 0, "trainable_params": 1000, "clip_score": 1.0, "r_precision": 5.0, "eval_clip": eval_clip}
            for h in (0, 16)]  # fmt: skip
    console = Console(width=250, record=True)
    console.print(ablate.results_table(rows, ["cs", "rp"], "t"))
    header = console.export_text().splitlines()
    text = " ".join(header)
    if mark is None:
        assert "random CLIP" not in text and "in-domain" not in text
    else:
        assert text.count(mark) == 2  # on the CS and on the R-precision column
    titles = []
    monkeypatch.setattr("matplotlib.axes.Axes.set_title", lambda self, label, *a, **k: titles.append(label))
    ablate.plot_ablation(rows, ["cs"], tmp_path / "a.png")
    expected = {None: "higher is better", "random CLIP: meaningless": "RANDOM CLIP", "in-domain CLIP (shapes)": "in-domain CLIP (shapes)"}
    assert any(expected[mark] in t for t in titles), titles


def test_every_cell_logs_its_h_and_final_metrics_as_tensorboard_hparams(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = sweep
    _, rows = read_csv(out / "ablation.csv")
    for r in rows:
        acc = EventAccumulator(str(out / r["run"] / "tensorboard" / "hparams"))
        acc.Reload()
        start = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        from tensorboard.plugins.hparams import plugin_data_pb2

        info = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info
        assert info.hparams["h"].number_value == int(r["h"]) and info.hparams["seed"].number_value == 0
        assert [e.value for e in acc.Scalars("final/clip_score")] == [pytest.approx(float(r["clip_score"]), rel=1e-6)]
        assert [e.value for e in acc.Scalars("final/shapes_all")] == [pytest.approx(float(r["shapes_all"]), abs=1e-6)]
        assert list((out / r["run"] / "tensorboard").glob("events.out.tfevents.*"))  # the training curves
