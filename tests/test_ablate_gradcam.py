"""The 2 x 2 RAT/SA ablation as one command (`--shuffle-attention true,false`), `ablate --gradcam` and
`ratlip gradcam` on its tiny runs (1 step each; the numbers mean nothing, the plumbing is tested)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from ratlip_cli import ablate
from ratlip_cli.ablate.gradcam import FIGURE_CAPTIONS
from ratlip_cli.cli import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    from ratlip_cli.data import generate_shapes

    root = tmp_path_factory.mktemp("ablate-sa")
    generate_shapes(root / "data", size=32, train_per_combo=1, test_per_combo=1, novel_per_combo=1)
    return root


def args(workdir: Path, out: Path, *extra: str) -> list[str]:
    return ["ablate", "tiny", "--hidden", "0,8", "--shuffle-attention", "true,false", "--steps", "1",
            "--eval-num", "8", "--metrics", "shapes", "--out", str(out), "--quiet",
            "--set", f"data.root={workdir / 'data'}", *extra]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def sweep(workdir) -> Path:
    out = workdir / "rat-sa"
    result = runner.invoke(app, args(workdir, out, "--gradcam"))
    assert result.exit_code == 0, result.output
    assert "2 h x 2 shuffle-attention settings x 1 seeds = 4 runs" in result.output
    return out


def test_two_by_two_cells_and_their_parameters(sweep):
    rows = read_rows(sweep / "ablation.csv")
    cells = {(r["h"], r["shuffle_attention"]) for r in rows}
    assert cells == {("0", "true"), ("0", "false"), ("8", "true"), ("8", "false")}
    assert {r["run"] for r in rows} == {"h0-s0", "h0-nosa-s0", "h8-s0", "h8-nosa-s0"}
    for r in rows:
        assert (sweep / r["run"] / "export").is_dir()
        assert (int(r["sa_params"]) > 0) == (r["shuffle_attention"] == "true")
    by = {(r["h"], r["shuffle_attention"]): r for r in rows}
    for h in ("0", "8"):
        on, off = by[(h, "true")], by[(h, "false")]
        assert int(on["generator_trainable"]) - int(off["generator_trainable"]) == int(on["sa_params"])
        assert on["rat_params"] == off["rat_params"] and on["discriminator_trainable"] == off["discriminator_trainable"]
    cfg_text = (sweep / "h8-nosa-s0" / "config.yaml").read_text()
    assert "shuffle_attention: false" in cfg_text


def test_gradcam_columns_and_figure(sweep):
    rows = read_rows(sweep / "ablation.csv")
    for r in rows:
        assert r["gradcam_protocol"].startswith("clip block -1: ")
        n = int(r["gradcam_images"])
        assert 0 <= n <= 8
        if n:
            assert 0.0 <= float(r["gradcam_object_share"]) <= 1.0
            assert 0.0 < float(r["gradcam_object_area"]) < 1.0
    w, h = Image.open(sweep / "gradcam.png").size
    cols = 2 * FIGURE_CAPTIONS
    assert (w, h) == (round((1.3 * cols + 1.2) * 110), round((1.45 * 4 + 0.9) * 110))  # 4 cells x 4 caption pairs


def _drawn(captions, seed, size=32):
    """The captions' objects drawn by the dataset's renderer (what a perfect generator would make)."""
    from ratlip_cli.data.shapes import SIZES, parse_shapes_caption, render_spec

    out = []
    for k, cap in enumerate(captions):
        p = parse_shapes_caption(cap)
        spec = {**p, "extent": sum(SIZES[p["size"]]) / 2, "cx": 0.4 + 0.05 * (k % 3), "cy": 0.5}
        out.append(np.asarray(render_spec(spec, size)))
    return out


def test_gradcam_share_of_drawn_objects_uses_the_checker_masks(sweep, workdir, monkeypatch):
    """With images whose objects are known, every image counts and the control is their mean object area."""
    from ratlip_cli.config import resolve_config
    from ratlip_cli.data.shapes import object_mask
    from ratlip_cli.data.shards import open_dataset
    from ratlip_cli.train.shapes_eval import shapes_eval_captions

    monkeypatch.setattr("ratlip_cli.gradcam.generate_images", lambda loaded, caps, seed: _drawn(caps, seed))
    cfg = resolve_config("tiny", overrides=[f"data.root={workdir / 'data'}", "eval.num=8"])
    rows = [{**r, "gradcam_protocol": ""} for r in read_rows(sweep / "ablation.csv")]
    out = ablate.add_gradcam(sweep, rows, cfg, None)
    captions = shapes_eval_captions(open_dataset(cfg.data.root, cfg.data.format, cfg.data.shard_url), "test", 8)
    area = float(np.mean([object_mask(i).mean() for i in _drawn(captions, 0)]))
    assert len(out) == 4
    for r in out:
        assert r["gradcam_images"] == 8
        assert r["gradcam_object_area"] == pytest.approx(area)
        assert 0.0 <= r["gradcam_object_share"] <= 1.0
    console = Console(width=400, record=True)
    console.print(ablate.results_table(out, ["shapes"], "t"))
    text = console.export_text()
    assert "Grad-CAM in object" in text and f"{area:.3f}" in text


def test_table_labels_and_plot(sweep, tmp_path):
    rows = read_rows(sweep / "ablation.csv")
    console = Console(width=400, record=True)
    console.print(ablate.results_table(rows, ["shapes"], "t"))
    text = console.export_text()
    assert "0 (RATLIP without RAT), no SA" in text and "8, no SA" in text
    summary = ablate.summarize(rows)
    assert [(e["h"], e["shuffle_attention"]) for e in summary] == [(0, True), (0, False), (8, True), (8, False)]
    ablate.plot_ablation(rows, ["shapes"], tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_rerun_trains_nothing_and_keeps_the_gradcam_numbers(sweep, workdir, monkeypatch):
    before = read_rows(sweep / "ablation.csv")

    def boom(*a, **k):
        raise AssertionError("trained, evaluated or re-scored although nothing was to do")

    monkeypatch.setattr(ablate, "train_run", boom)
    monkeypatch.setattr(ablate, "evaluate_cell", boom)
    monkeypatch.setattr("ratlip_cli.gradcam.shapes_object_share", boom)
    (sweep / "gradcam.png").unlink()
    result = runner.invoke(app, args(workdir, sweep, "--gradcam"))
    assert result.exit_code == 0, result.output
    assert "4 here, 4 done, 0 to train" in result.output
    assert (sweep / "gradcam.png").is_file()
    after = read_rows(sweep / "ablation.csv")
    keep = ("gradcam_object_share", "gradcam_object_area", "gradcam_images", "sa_params", "shapes_all")
    assert [{k: r[k] for k in keep} for r in after] == [{k: r[k] for k in keep} for r in before]


def test_ratlip_gradcam_on_two_runs(sweep, tmp_path):
    out = tmp_path / "fig.png"
    result = runner.invoke(app, ["gradcam", "--run", str(sweep / "h0-s0"), "--run", str(sweep / "h8-nosa-s0"),
                                 "a big red circle on a blue background", "a small green square on a gray background",
                                 "a big white triangle on a black background", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out} (2 rows x 3 captions)" in result.output.replace("\n", "")
    assert Image.open(out).size == (round((1.3 * 6 + 1.2) * 110), round((1.45 * 2 + 0.9) * 110))


def test_gradcam_and_sa_refusals(sweep, workdir, tmp_path):
    bad = runner.invoke(app, ["gradcam", "--run", str(sweep / "h0-s0"), "x", "--set", "model.ngf=8"])
    assert bad.exit_code == 2 and "eval." in bad.output
    none = runner.invoke(app, ["gradcam", "--run", str(sweep / "h0-s0")])
    assert none.exit_code == 2 and "caption" in none.output
    block = runner.invoke(app, ["gradcam", "--run", str(sweep / "h0-s0"), "x", "--set", "eval.gradcam_block=9",
                                "--out", str(tmp_path / "b.png")])
    assert block.exit_code == 2 and "eval.gradcam_block=9" in block.output
    setsa = runner.invoke(app, args(workdir, tmp_path / "x", "--set", "model.shuffle_attention=false"))
    assert setsa.exit_code == 2 and "--shuffle-attention" in setsa.output
    word = runner.invoke(app, args(workdir, tmp_path / "x", "--shuffle-attention", "maybe"))
    assert word.exit_code == 2 and "true and/or false" in word.output
    galip = runner.invoke(app, ["ablate", "tiny", "--sweep", "model.family=ratlip,galip", "--set", "model.rat.hidden=0",
                                "--shuffle-attention", "false", "--steps", "1", "--out", str(tmp_path / "g")])
    assert galip.exit_code == 2 and "no shuffle attention" in galip.output
    params = runner.invoke(app, ["ablate", "tiny", "--params-only", "--shuffle-attention", "false"])
    assert params.exit_code == 2 and "--shuffle-attention cannot be used with --params-only" in params.output


def test_discriminator_target(sweep, workdir, tmp_path):
    out = tmp_path / "d.png"
    result = runner.invoke(app, ["gradcam", "--run", str(sweep / "h0-s0"), "--run", str(sweep / "h8-s0"), "a red circle",
                                 "--set", "eval.gradcam_target=discriminator", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (round((1.3 * 2 + 1.2) * 110), round((1.45 * 2 + 0.9) * 110))
    from ratlip_cli.config import resolve_config

    cfg = resolve_config("tiny", overrides=[f"data.root={workdir / 'data'}", "eval.num=4",
                                            "eval.gradcam_target=discriminator"])
    rows = read_rows(sweep / "ablation.csv")
    updated = ablate.add_gradcam(sweep, rows, cfg, None)
    assert {r["gradcam_protocol"] for r in updated} == {"discriminator (each run's own, latest checkpoint)"}


def test_sweep_spec_leaves_out_the_cell_and_gradcam_settings():
    from ratlip_cli.config import resolve_config

    base = ablate.sweep_spec(resolve_config("tiny"), ["shapes"])
    other = ablate.sweep_spec(resolve_config("tiny", overrides=["model.shuffle_attention=false", "eval.gradcam_block=-2",
                                                                "eval.gradcam_target=discriminator"]), ["shapes"])
    assert ablate.spec_hash(base) == ablate.spec_hash(other)
    assert not any(k.startswith("eval.gradcam") or k == "model.shuffle_attention" for k in base["config"])
    changed = ablate.sweep_spec(resolve_config("tiny", overrides=["eval.num=3"]), ["shapes"])
    assert ablate.spec_hash(changed) != ablate.spec_hash(base)


def test_report_shows_the_gradcam_figure_and_the_sa_column(sweep, tmp_path):
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(sweep), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert 'class="ablation-gradcam"' in page and "shuffle_attention" in page and "h8-nosa-s0" in page
