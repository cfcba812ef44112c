"""Commands that read a dataset, on shapes in each format: the folder format, its decoded copy and tar
shards (issue 26: `ratlip train shapes` on its own shard format crashed in the in-domain CLIP)."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from ratlip_cli.cli import app
from ratlip_cli.train.run import read_metrics

FORMATS = {"prepared": [], "decoded": ["--decoded"], "shards": ["--format", "shards", "--shard-mb", "0.2"]}
CLIP = ["clip.weights=in-domain", "clip.pretrain.steps=2", "clip.pretrain.batch_size=8",
        "clip.pretrain.warmup_steps=1"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Per format: `ratlip prepare shapes`, then `ratlip train tiny` with an in-domain CLIP built on it."""
    base = tmp_path_factory.mktemp("formats")
    out = {}
    for fmt, flags in FORMATS.items():
        root = base / fmt
        r = CliRunner().invoke(app, ["prepare", "shapes", "--out", str(root), "--size", "32", *flags])
        assert r.exit_code == 0 and "Traceback" not in r.output, r.output
        sets = [f"data.root={root}", "data.name=shapes", f"train.runs_dir={base / 'runs'}", f"train.name={fmt}", *CLIP]
        r = CliRunner().invoke(app, ["train", "tiny", "--device", "cpu", *[a for s in sets for a in ("--set", s)]])
        assert r.exit_code == 0 and "Traceback" not in r.output, (fmt, r.output)
        run = base / "runs" / fmt
        r = CliRunner().invoke(app, ["eval", "--run", str(run), "--num", "32", "--device", "cpu", "--quiet"])
        assert r.exit_code == 0 and "Traceback" not in r.output, (fmt, r.output)
        out[fmt] = (root, run)
    return out


def test_train_with_an_in_domain_clip_runs_on_every_format(trained):
    for fmt, (root, run) in trained.items():
        rows = read_metrics(run / "metrics.csv")
        assert [int(r["step"]) for r in rows] == [1, 2, 3, 4], fmt
        assert (run / "export" / "generator.safetensors").is_file()
        assert len(list((root / "in-domain-clip").glob("*.safetensors"))) == 1, fmt


def test_the_in_domain_clip_is_the_same_from_every_format(trained):
    weights = {fmt: load_file(str(next((root / "in-domain-clip").glob("*.safetensors"))))
               for fmt, (root, _) in trained.items()}  # fmt: skip
    ref = weights["prepared"]
    for fmt, w in weights.items():
        assert w.keys() == ref.keys() and all((w[k] == ref[k]).all() for k in ref), fmt


def test_the_decoded_copy_trains_the_same_steps_as_the_folder(trained):
    a = read_metrics(trained["prepared"][1] / "metrics.csv")
    b = read_metrics(trained["decoded"][1] / "metrics.csv")
    assert [r["d_loss"] for r in a] == [r["d_loss"] for r in b] and [r["g_loss"] for r in a] == [r["g_loss"] for r in b]


def test_eval_reads_every_format_and_records_the_dataset_it_read(trained):
    import csv

    rows = {}
    for fmt, (root, run) in trained.items():
        with open(run / "eval.csv", newline="", encoding="utf-8") as f:
            (row,) = list(csv.DictReader(f))
        assert row["dataset"] == str(root.resolve()) and row["split"] == "test", fmt
        rows[fmt] = row
    # the same test images in three formats: one content fingerprint
    assert len({r["dataset_fingerprint"] for r in rows.values()}) == 1
    # the decoded copy trains the same generator as the folder: the same FID on the same images
    assert rows["decoded"]["fid"] == rows["prepared"]["fid"]


@pytest.mark.parametrize("fmt", ["shards", "decoded"])
def test_pretrain_text_ablate_and_report_read_the_format(trained, tmp_path, fmt):
    root, run = trained[fmt]
    data = ["--set", f"data.root={root}", "--set", "data.name=shapes"]
    r = CliRunner().invoke(app, ["pretrain-text", "tiny", *data, "--set", "damsm.max_steps=2",
                                 "--set", f"train.runs_dir={tmp_path}"])  # fmt: skip
    assert r.exit_code == 0 and "Traceback" not in r.output and "held-out 'test' split" in r.output, r.output
    r = CliRunner().invoke(app, ["ablate", "tiny", "--hidden", "0", "--steps", "2", *data, "--out", str(tmp_path / "abl"),
                                 "--eval-num", "16", "--feature-extractor", "random-tiny", "--device", "cpu", "--quiet"])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert (tmp_path / "abl" / "ablation.csv").read_text().count("\n") >= 2
    r = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "report.html")])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert (tmp_path / "report.html").stat().st_size > 1000
