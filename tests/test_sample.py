"""`ratlip sample`: reproducible generation, grid layout, interpolation and one-line errors.

One tiny run (the `tiny` preset, 2 steps) is trained per session and shared by every test.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ratlip_cli import sample as S
from ratlip_cli.cli import app

runner = CliRunner()
PROMPTS = ["a red circle on a blue background", "a green square", "a small yellow triangle on white"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run of the tiny preset trained for 2 steps, with its export."""
    root = tmp_path_factory.mktemp("sample")
    args = ["train", "tiny", "--set", f"train.runs_dir={root / 'runs'}", "--set", f"data.root={root / 'data'}"]
    args += ["--set", "train.max_steps=2", "--set", "train.name=tiny2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    exports = list((root / "runs").glob("*/export/generator.safetensors"))
    assert len(exports) == 1, exports
    return exports[0].parent.parent


@pytest.fixture(scope="session")
def loaded(tiny_run):
    """The exported tiny generator, prepared for sampling (float64, eval)."""
    return S.prepare_generator(S.load_weights(tiny_run, torch.device("cpu")))


def sample_cli(*args: str):
    return runner.invoke(app, ["sample", *args])


def cell(grid: Image.Image, layout: S.GridLayout, row: int, col: int) -> Image.Image:
    x, y = layout.cell_origin(row, col)
    return grid.crop((x, y, x + layout.image_size, y + layout.image_size))


# ----------------------------------------------------------------------------- pure functions


def test_noise_seeds_are_stable_and_keyed():
    assert S.noise_seed(0, "a red circle", 3) == S.noise_seed(0, "a red circle", 3)
    assert len({S.noise_seed(0, "a", 0), S.noise_seed(1, "a", 0), S.noise_seed(0, "b", 0), S.noise_seed(0, "a", 1)}) == 4
    # --fixed-noise: column j has the same noise in every row; interpolation: one noise for the row
    assert S.row_seeds(5, "a", 4, vary_noise=False) == S.row_seeds(5, "b", 4, vary_noise=False)
    assert len(set(S.interpolation_seeds(5, 4))) == 1 and len(set(S.interpolation_seeds(5, 4, True))) == 4
    assert torch.equal(S.make_noise([7, 8], 16)[1], S.make_noise([8], 16)[0])


def test_layout_arithmetic_and_label_wrapping():
    labels = ["short", "a much longer prompt " * 12]
    layout = S.grid_layout(labels, rows=2, cols=3, image_size=32)
    assert layout.width == 3 * 32
    assert layout.height == 2 * 32 + sum(layout.label_heights)
    assert layout.label_heights[0] == 2 * layout.pad + layout.line_height  # one line
    assert 1 < len(layout.label_lines[1]) <= S.LABEL_MAX_LINES and layout.label_lines[1][-1].endswith("…")
    font = S.label_font(layout.font_size)
    assert all(font.getlength(line) <= layout.width - 2 * layout.pad for line in layout.label_lines[1])
    bare = S.grid_layout(None, rows=2, cols=3, image_size=32)
    assert (bare.width, bare.height) == (96, 64)


# -------------------------------------------------------------------------------- generation


def test_grid_size_is_rows_by_cols_plus_label_space(loaded):
    size = loaded.cfg.model.image_size
    images = S.generate(loaded, PROMPTS[:2], n=3, seed=0)
    assert images.shape == (2, 3, 3, size, size) and images.dtype == torch.uint8
    grid = S.render_grid(images, PROMPTS[:2])
    layout = S.grid_layout(PROMPTS[:2], 2, 3, size)
    label_space = sum(layout.label_heights)
    assert label_space > 0
    assert grid.size == (3 * size, 2 * size + label_space)
    assert cell(grid, layout, 1, 2).tobytes() == S.to_pil(images[1, 2]).tobytes()
    strip = grid.crop((0, 0, grid.width, layout.label_heights[0])).convert("L")
    assert strip.getextrema()[0] < 100  # the label is drawn (dark text on white)


def test_same_seed_same_pixels_for_batch_sizes_1_and_8(loaded):
    one = S.generate(loaded, PROMPTS[:2], n=3, seed=3, batch_size=1)
    eight = S.generate(loaded, PROMPTS[:2], n=3, seed=3, batch_size=8)
    assert torch.equal(one, eight)
    assert not torch.equal(one[:1], S.generate(loaded, PROMPTS[:1], n=3, seed=4, batch_size=8))


def test_interpolation_ends_are_the_prompts_with_fixed_noise(loaded):
    row = S.interpolate(loaded, PROMPTS[0], PROMPTS[1], steps=4, seed=2, batch_size=3)
    assert row.shape[:2] == (1, 4)
    fixed = S.generate(loaded, PROMPTS[:2], n=1, seed=2, vary_noise=False)
    assert torch.equal(row[0, 0], fixed[0, 0]) and torch.equal(row[0, -1], fixed[1, 0])


def test_long_prompt_is_truncated_to_the_context(loaded):
    ctx = S.context_length(loaded)
    long = " ".join(["red"] * (ctx + 5))
    p = S.check_prompt(long, loaded.tokenizer, ctx)
    assert p.truncated and p.kept == " ".join(["red"] * (ctx - 2))
    assert not S.check_prompt("a red circle", loaded.tokenizer, ctx).truncated


def test_weights_load_without_pickle(tiny_run, monkeypatch):
    from ratlip_cli.export import load_generator

    def refuse(*_a, **_k):
        raise AssertionError("pickle used to load weights")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    loaded = load_generator(tiny_run, "cpu")
    assert S.generate(loaded, PROMPTS[:1], n=1).shape[:2] == (1, 1)


# ------------------------------------------------------------------------------------- CLI


def test_cli_prompt_order_and_batch_size_do_not_change_images(tiny_run, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    ra = sample_cli(*PROMPTS, "--run", str(tiny_run), "--n", "3", "--out", str(a), "--batch-size", "4",
                    "--save-individual", str(tmp_path / "single"))
    assert ra.exit_code == 0, ra.output
    assert str(a) in ra.output and "seed 0" in ra.output
    order = [PROMPTS[2], PROMPTS[0]]
    rb = sample_cli(*order, "--run", str(tiny_run), "--n", "3", "--out", str(b), "--batch-size", "1")
    assert rb.exit_code == 0, rb.output
    ga, gb = Image.open(a), Image.open(b)
    # 32 px images are shown 4x (128 px, the default --display-size) in the grid
    assert "shown 4x at 128x128" in ra.output
    la, lb = S.grid_layout(PROMPTS, 3, 3, 128), S.grid_layout(order, 2, 3, 128)
    assert ga.size == (la.width, la.height) and gb.size == (lb.width, lb.height)
    for col in range(3):
        assert cell(gb, lb, 0, col).tobytes() == cell(ga, la, 2, col).tobytes()
        assert cell(gb, lb, 1, col).tobytes() == cell(ga, la, 0, col).tobytes()
    singles = sorted((tmp_path / "single").glob("*.png"))
    assert len(singles) == 9 and (tmp_path / "single" / "seeds.csv").is_file()
    for i, path in enumerate(singles):
        single = Image.open(path).convert("RGB")
        assert single.size == (32, 32)  # the generator's own pixels, not the display size
        assert cell(ga, la, i // 3, i % 3).tobytes() == single.resize((128, 128), Image.Resampling.NEAREST).tobytes()


def test_cli_display_size_zero_keeps_native_pixels_and_negative_is_refused(tiny_run, tmp_path):
    out = tmp_path / "native.png"
    r = sample_cli(PROMPTS[0], "--run", str(tiny_run), "--n", "2", "--out", str(out), "--display-size", "0",
                   "--save-individual", str(tmp_path / "single"))
    assert r.exit_code == 0, r.output
    layout = S.grid_layout(PROMPTS[:1], 1, 2, 32)
    grid = Image.open(out)
    assert grid.size == (layout.width, layout.height)
    first = Image.open(sorted((tmp_path / "single").glob("*.png"))[0]).convert("RGB")
    assert cell(grid, layout, 0, 0).tobytes() == first.tobytes()
    # 100 px asks for a whole factor: 32 px -> 4x = 128 px (at least the size asked for)
    assert S.display_scale(32, 100) == 4 and S.display_scale(32, 128) == 4 and S.display_scale(256, 128) == 1
    bad = sample_cli(PROMPTS[0], "--run", str(tiny_run), "--out", str(tmp_path / "x.png"), "--display-size", "-1")
    assert bad.exit_code != 0 and "display size must be >= 0" in bad.output and "Traceback" not in bad.output


@pytest.mark.parametrize("name, fmt", [("g.png", "PNG"), ("g.jpg", "JPEG"), ("g.jpeg", "JPEG"), ("g.webp", "WEBP")])
def test_image_format_follows_the_extension(tmp_path, name, fmt):
    S.save_image(Image.new("RGB", (8, 8), (200, 10, 10)), tmp_path / "sub" / name)
    assert Image.open(tmp_path / "sub" / name).format == fmt


def test_cli_interpolate_and_latest_run(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    old, new = runs / "old", runs / "new"
    shutil.copytree(tiny_run, old)
    shutil.copytree(tiny_run, new)
    past = time.time() - 3600
    os.utime(old / "export" / "generator.safetensors", (past, past))
    out = tmp_path / "walk.png"
    result = sample_cli("--interpolate", PROMPTS[0], PROMPTS[1], "--steps", "3", "--runs-dir", str(runs),
                        "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "most recent" in result.output and "new" in result.output
    layout = S.grid_layout([f"{PROMPTS[0]}  ->  {PROMPTS[1]}"], 1, 3, 128)
    assert Image.open(out).size == (layout.width, layout.height)


def test_cli_long_prompt_warns_with_what_was_kept(tiny_run, tmp_path):
    long = "a red circle " + "with many more words " * 6
    result = sample_cli(long, "--run", str(tiny_run), "--n", "1", "--out", str(tmp_path / "g.png"))
    assert result.exit_code == 0, result.output
    assert "truncated" in result.output and "kept:" in result.output and "a red circle" in result.output


def _one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "error:" in result.output
    for fragment in fragments:
        assert fragment in result.output.replace("\n", " ")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["  "], "prompt 1 is empty"),
        (["ok", ""], "prompt 2 is empty"),
        ([], "at least one prompt"),
        (["a", "--n", "0"], "--n must be at least 1"),
        (["a", "--n", "-3"], "--n must be at least 1"),
        (["a", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["a", "--out", "grid.gif"], ".png, .jpg"),
        (["--interpolate", "a", "b", "--steps", "1"], "--steps must be at least 2"),
    ],
)
def test_cli_bad_arguments(args, fragment):
    _one_line_error(sample_cli(*args), fragment)


def test_cli_unreadable_prompts_file(tmp_path):
    _one_line_error(sample_cli("--prompts-file", str(tmp_path / "nope.txt")), "cannot read prompts file")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    _one_line_error(sample_cli("--prompts-file", str(binary)), "not UTF-8")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    _one_line_error(sample_cli("--prompts-file", str(empty)), "holds no prompts")


def test_cli_missing_weights_and_runs(tmp_path):
    _one_line_error(sample_cli("a", "--weights", str(tmp_path / "g.safetensors")), "weights file not found")
    _one_line_error(sample_cli("a", "--run", str(tmp_path / "nope")), "run directory not found")
    (tmp_path / "runs" / "unfinished").mkdir(parents=True)
    _one_line_error(sample_cli("a", "--run", str(tmp_path / "runs" / "unfinished")), "has no export")
    _one_line_error(sample_cli("a", "--runs-dir", str(tmp_path / "runs")), "ratlip train shapes")


def _swap_arch(node, old: str, new: str) -> bool:
    """Replace a CLIP architecture name anywhere in a JSON tree; True when one was found."""
    found = False
    if isinstance(node, dict):
        for key, value in node.items():
            if value == old:
                node[key] = new
                found = True
            else:
                found |= _swap_arch(value, old, new)
    elif isinstance(node, list):
        for item in node:
            found |= _swap_arch(item, old, new)
    return found


def test_cli_mismatched_weights(tiny_run, tmp_path):
    run = tmp_path / "mismatched"
    shutil.copytree(tiny_run, run)
    meta_path = run / "export" / "generator.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    assert _swap_arch(meta, "ratlip-tiny", "ratlip-shapes")
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    _one_line_error(sample_cli("a red circle", "--run", str(run), "--n", "1", "--out", str(tmp_path / "g.png")))
    assert not (tmp_path / "g.png").exists()
