"""The public Python API (`ratlip_cli.pipeline`): docs/python-api.md's examples run as written, and a
loaded or saved model draws the pixels `ratlip sample` draws."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ratlip_cli.cli import app
from ratlip_cli.errors import RatlipError
from ratlip_cli.pipeline import Pipeline, model_card

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"
PROMPTS = ["a red circle on a blue background", "a green square"]
runner = CliRunner()


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture(scope="module")
def doc_session(tmp_path_factory):
    """docs/python-api.md's python blocks, run in order in one namespace in an empty folder."""
    import os

    blocks = _python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 3
    folder = tmp_path_factory.mktemp("python-api")
    before = Path.cwd()
    os.chdir(folder)
    try:
        namespace: dict = {}
        for i, block in enumerate(blocks):
            exec(compile(block, f"{DOC.name} block {i + 1}", "exec"), namespace)
    finally:
        os.chdir(before)
    return folder, namespace


def _sample_cli(tmp_path: Path, *source: str) -> np.ndarray:
    """`ratlip sample PROMPTS --n 2` saved image by image: (P, 2, S, S, 3) uint8."""
    out = tmp_path / "single"
    args = ["sample", *PROMPTS, *source, "--n", "2", "--seed", "5", "--out", str(tmp_path / "grid.png"),
            "--save-individual", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.png"))
    assert len(files) == 2 * len(PROMPTS)
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]).reshape(len(PROMPTS), 2, 32, 32, 3)


def _as_hwc(images) -> np.ndarray:
    return images.permute(0, 1, 3, 4, 2).numpy()


def test_the_examples_run_and_give_what_they_say(doc_session):
    folder, ns = doc_session
    assert ns["result"].step == 2 and (folder / "runs" / "tiny" / "export" / "generator.safetensors").is_file()
    images = ns["images"]
    assert tuple(images.shape) == (2, 4, 3, 32, 32) and str(images.dtype) == "torch.uint8"
    assert images.float().std() > 0  # not a blank image
    square = np.asarray(Image.open(folder / "square.png").convert("RGB"))
    assert (square == _as_hwc(ns["pipe"].generate(["a green square"], n=2, seed=0))[0, 0]).all()
    saved = sorted(p.name for p in (folder / "my-model").iterdir())
    assert saved == ["README.md", "clip.safetensors", "generator.json", "generator.safetensors", "generator_raw.safetensors"]


def test_generate_draws_the_pixels_of_ratlip_sample(doc_session, tmp_path):
    folder, _ = doc_session
    run = folder / "runs" / "tiny"
    cli = _sample_cli(tmp_path, "--run", str(run))
    pipe = Pipeline.from_pretrained(run)
    ours = _as_hwc(pipe.generate(PROMPTS, n=2, seed=5))
    assert (ours == cli).all()
    assert (ours != _as_hwc(pipe.generate(PROMPTS, n=2, seed=6))).any()  # the comparison can fail
    assert (ours[:, 0] != ours[:, 1]).any() and (ours[0] != ours[1]).any()  # noise and prompt matter
    # each prompt's images do not depend on the other prompts, nor on the batch size
    alone = Pipeline.from_pretrained(run / "export").generate(PROMPTS[1:], n=2, seed=5, batch_size=1)
    assert (_as_hwc(alone)[0] == cli[1]).all()


def test_a_saved_folder_is_self_contained_and_draws_the_same_pixels(doc_session, tmp_path):
    folder, _ = doc_session
    run, saved = folder / "runs" / "tiny", folder / "my-model"
    doc = json.loads((saved / "generator.json").read_text(encoding="utf-8"))
    assert doc["clip"]["file"] == "clip.safetensors"
    assert (saved / "clip.safetensors").read_bytes() == (run / "clip.safetensors").read_bytes()
    for name, digest in doc["weights_sha256"].items():  # the bytes of the run's export, checks and all
        assert hashlib.sha256((saved / name).read_bytes()).hexdigest() == digest
        assert (saved / name).read_bytes() == (run / "export" / name).read_bytes()
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in saved.iterdir():  # the folder alone, away from the run it came from
        (moved / f.name).write_bytes(f.read_bytes())
    cli = _sample_cli(tmp_path, "--weights", str(moved / "generator.safetensors"))
    assert (_as_hwc(Pipeline.from_pretrained(moved).generate(PROMPTS, n=2, seed=5)) == cli).all()
    assert (cli == _sample_cli(tmp_path / "run", "--run", str(run))).all()


def test_the_model_card_is_filled_from_the_run(doc_session):
    folder, _ = doc_session
    card = (folder / "my-model" / "README.md").read_text(encoding="utf-8")
    assert "library_name: ratlip" in card and "license: mit" in card and "datasets: [shapes]" in card
    assert "| model.family | ratlip |" in card and "| dataset | shapes |" in card
    assert "| trained | 2 steps," in card and "ratlip sample --weights generator.safetensors" in card
    assert "No evaluation recorded" in card
    doc = json.loads((folder / "my-model" / "generator.json").read_text(encoding="utf-8"))
    hidden = doc["config"]["model"]["rat"]["hidden"]
    assert f"| RAT hidden size h | {hidden} |" in card
    rows = [{"fid": "12.5", "clip_score": "30.1", "num_images": "30000", "split": "test", "seed": "0", "generator": "raw"}]
    with_eval = model_card(doc, rows)
    assert "| fid | clip_score | generator | num_images | split | seed |" in with_eval
    assert "| 12.5 | 30.1 | raw | 30000 | test | 0 |" in with_eval and "No evaluation recorded" not in with_eval


def test_bad_paths_are_one_line_errors(doc_session, tmp_path):
    folder, ns = doc_session
    with pytest.raises(RatlipError, match="no trained model at"):
        Pipeline.from_pretrained(tmp_path / "missing")
    with pytest.raises(RatlipError, match="is the folder this model was loaded from"):
        Pipeline.from_pretrained(folder / "my-model").save_pretrained(folder / "my-model")
