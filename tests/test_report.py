"""`ratlip report`: the page is one file (no network), its images decode to the run's own grids, and it
shows the run name, the eval numbers, the config and the environment; ablation pages show mean ± std.

The run folder here is written by hand (metrics.csv, grids, eval.csv, config.yaml), so the expected
content is known exactly; tests/test_browser.py renders a page of a really trained run in Chromium.
"""

from __future__ import annotations

import base64
import csv
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ratlip_cli import report
from ratlip_cli.cli import app
from ratlip_cli.config import resolve_config, save_config
from ratlip_cli.evaluate import NOT_FID_MARK
from ratlip_cli.models.ratlip.step import METRICS_COLUMNS

runner = CliRunner()


class Page(HTMLParser):
    """The parts of a report page the tests look at: images, links, text by element id, table cells."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.urls: list[str] = []
        self.by_id: dict[str, list[str]] = {}
        self.cells: dict[str, list[str]] = {}
        self._open: list[str | None] = []
        self._table: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        for key in ("href", "src"):
            if key in a and tag != "img":
                self.urls.append(a[key])
        if tag == "link" or tag == "script":
            self.urls.append(f"<{tag}>")
        if tag == "table":
            self._table = a.get("id")
        if tag not in ("img", "meta", "br"):
            self._open.append(a.get("id"))

    def handle_endtag(self, tag):
        if tag not in ("img", "meta", "br") and self._open:
            self._open.pop()
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        for ident in self._open:
            if ident:
                self.by_id.setdefault(ident, []).append(data)
        if self._table and data.strip():
            self.cells.setdefault(self._table, []).append(data.strip())

    def text(self, ident: str) -> str:
        return "".join(self.by_id.get(ident, []))


def decode(img: dict[str, str]) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix), img["src"][:40]
    return Image.open(io.BytesIO(base64.b64decode(img["src"][len(prefix):])))


def write_grid(path: Path, colour: tuple[int, int, int]) -> np.ndarray:
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    pixels[:] = colour
    pixels[5:10, 5:10] = 255 - np.asarray(colour, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    path.with_suffix(".txt").write_text(f"row 1, col 1: a shape coloured {colour}\n", encoding="utf-8")
    return pixels


@pytest.fixture
def run_dir(tmp_path) -> tuple[Path, dict[int, np.ndarray]]:
    """A run folder with 5 log rows, one in-training eval row, 4 grids and one evaluation."""
    run = tmp_path / "runs" / "my-run-7"
    (run / "samples").mkdir(parents=True)
    save_config(resolve_config("tiny"), run / "config.yaml")
    with open(run / "metrics.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRICS_COLUMNS, restval="")
        writer.writeheader()
        for step in range(1, 6):
            writer.writerow({"step": step, "epoch": step / 10, "images": 4 * step, "d_loss": 2 - step / 10,
                             "d_real": 1, "d_fake": 0.5, "d_mis": 0.5, "ma_gp": 0.01, "g_loss": step / 5,
                             "g_clip": 0.1, "nonfinite": 0, "images_per_s": 40 + step, "elapsed_s": step})
        writer.writerow({"step": 5, "epoch": 0.5, "images": 20, "eval_colour": 0.25, "eval_shape": 0.5,
                         "eval_background": 0.75, "eval_n": 16})
    grids = {}
    for step, colour in ((0, (200, 0, 0)), (2, (0, 200, 0)), (4, (0, 0, 200)), (5, (90, 90, 90))):
        grids[step] = write_grid(run / "samples" / f"step-{step:08d}.png", colour)
    row = {"time": "2026-11-30T10:00:00+00:00", "mode": "run", "source": "my-run-7", "num_images": 64, "passes": "",
           "fid": 123.456789, "kid_x1e3": 45.6, "kid_std_x1e3": 1.2, "clip_score": 27.125, "r_precision": 38.5,
           "r_precision_candidates": 100, "fid_mode": "clean", "feature_extractor": "inception",
           "feature_weights": "inception-2015-12-05.pt", "eval_clip": "ViT-B-32 openai", "image_size": 32,
           "ref_size": 32, "ref_images": 384, "ref_cache": "x.npz", "dataset": "data/tiny", "split": "test",
           "seed": 0, "kid_subsets": 10, "kid_subset_size": 8, "device": "cpu", "ratlip": "0.1.0", "seconds": 3.0}
    with open(run / "eval.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    return run, grids


def test_run_page_is_self_contained_and_shows_the_run(run_dir):
    run, grids = run_dir
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    path = run / "report.html"
    page = Page(path.read_text(encoding="utf-8"))
    assert page.urls == []  # no link, script or href: nothing is fetched
    assert page.text("run-name") == "my-run-7"
    assert "step 5" in page.text("run-facts") and "none yet" in page.text("run-facts")

    # Every image is an inline PNG that decodes; the grids are the run's own pixels, in step order.
    alts = [img["alt"] for img in page.images]
    assert alts == ["training curves"] + [f"samples at step {s}" for s in (0, 2, 4, 5)]
    curves = decode(page.images[0])
    assert curves.size[0] > 400 and curves.size[1] > 300
    for img, step in zip(page.images[1:], (0, 2, 4, 5)):
        assert np.array_equal(np.asarray(decode(img).convert("RGB")), grids[step])

    latest = page.cells["eval-latest"]
    assert "123.457" in latest and "45.600 ± 1.200" in latest and "27.12" in latest and "38.50" in latest
    assert "FID (clean-fid, mode clean)" in latest
    assert "123.5" in page.cells["eval-history"] and "inception" in page.cells["eval-history"]
    assert "preset: tiny" in page.text("config") and "hidden: 8" in page.text("config")
    from importlib.metadata import version

    env = page.cells["environment-report"]
    assert env[env.index("torch") + 1] == version("torch")


def test_random_tiny_eval_is_marked_and_missing_parts_are_said(run_dir, tmp_path):
    run, _ = run_dir
    rows = list(csv.DictReader(open(run / "eval.csv", encoding="utf-8")))
    rows[0]["feature_extractor"] = NOT_FID_MARK
    with open(run / "eval.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = report.run_page(run, max_grids=12)
    assert "FID (random-tiny, NOT FID)" in Page(text).cells["eval-latest"]
    assert "NOT FID/KID" in text

    bare = tmp_path / "runs" / "bare"
    bare.mkdir()
    save_config(resolve_config("tiny"), bare / "config.yaml")
    page = Page(report.run_page(bare, max_grids=12))
    assert page.images == [] and "No evaluation yet" in page.text("no-eval")


def test_grids_are_spread_and_include_first_and_last(tmp_path):
    for step in range(0, 200, 10):
        write_grid(tmp_path / f"step-{step:08d}.png", (step, 0, 0))
    (tmp_path / "step-x.png").write_bytes(b"")  # not a grid name: ignored
    picked = [s for s, _ in report.sample_grids(tmp_path, 5)]
    assert picked[0] == 0 and picked[-1] == 190 and len(picked) == 5 and picked == sorted(picked)
    assert [s for s, _ in report.sample_grids(tmp_path, 1)] == [190]
    assert report.sample_grids(tmp_path, 0) == []
    assert len(report.sample_grids(tmp_path, 50)) == 20


def test_ablation_page_has_mean_std_table_plot_and_cells(tmp_path):
    from ratlip_cli import ablate

    folder = tmp_path / "ablate-x"
    rows = []
    for h, base in ((0, 10.0), (16, 12.0)):
        for seed, delta in ((0, -1.0), (1, 1.0)):
            rows.append({"h": h, "seed": seed, "trainable_params": 1000 + h, "clip_score": base + delta,
                         "fid": 50.0 - base + delta, "feature_extractor": "inception", "steps": 2,
                         "run": f"h{h}-s{seed}"})
    ablate.write_rows(folder / ablate.CSV_FILE, rows)
    path = report.write_report(folder)
    page = Page(path.read_text(encoding="utf-8"))
    assert page.text("run-name") == "ablate-x" and page.urls == []
    table = page.cells["ablation-table"]
    assert "0 (RATLIP without RAT)" in table and "12.00 ± 1.41" in table and "38.000 ± 1.414" in table
    assert [img["alt"] for img in page.images] == ["ablation plot: metrics against h with error bars"]
    assert decode(page.images[0]).size[0] > 500
    cells = page.cells["ablation-cells"]
    assert cells.count("h16-s1") == 1 and "11" in cells and "13" in cells


def test_ablation_page_of_another_key_names_the_key_and_values(tmp_path):
    from ratlip_cli import ablate

    folder = tmp_path / "ablate-lr"
    rows = [{"sweep_key": "train.lr_g", "value": v, "h": 64, "seed": 0, "trainable_params": 1000, "clip_score": cs,
             "steps": 2, "run": f"lr_g-{v}-s0"} for v, cs in (("0.0001", 10.0), ("0.0003", 11.0))]
    ablate.write_rows(folder / ablate.CSV_FILE, rows)
    html = report.write_report(folder).read_text(encoding="utf-8")
    page = Page(html)
    assert [img["alt"] for img in page.images] == ["ablation plot: metrics against value of train.lr_g with error bars"]
    cells = page.cells["ablation-cells"]
    assert "train.lr_g" in cells and "0.0003" in cells and "lr_g-0.0001-s0" in cells
    assert "One line per value of train.lr_g" in html


def test_not_a_run_folder_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "neither a run folder" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "is not a folder" in result.output


def test_loss_panels_follow_each_familys_own_columns():
    from ratlip_cli.models.caegan.step import CaeganStep
    from ratlip_cli.models.ecagan.step import EcaganStep
    from ratlip_cli.models.ratlip.step import RatlipStep
    from ratlip_cli.train.run import metrics_columns

    for step in (RatlipStep, EcaganStep, CaeganStep):
        header = metrics_columns(step.loss_columns)
        drawn = [c for _, series in report.loss_panels(header) for c, _ in series]
        assert sorted(drawn) == sorted(step.loss_columns), step.__name__  # every loss, once
    panels = dict(report.loss_panels(metrics_columns(EcaganStep.loss_columns)))
    assert panels["G parts"] == [("g_damsm", "DAMSM"), ("g_kl", "KL (CA)"), ("g_per", "perceptual")]
    assert "MA-GP" not in panels
    panels = dict(report.loss_panels(METRICS_COLUMNS))
    assert panels["MA-GP"] == [("ma_gp", "MA-GP")] and panels["G parts"] == [("g_clip", "cos(CLIP image, sentence)")]
    assert report.loss_panels(["step", "time"]) == []
