"""Event files of a run: tags from metrics rows, learning rates, grids with captions, hparams, and a
resumed writer that continues the curves without a step twice."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ratlip_cli.train.tensorboard import RunBoard, read_scalars, scalar_tag


def _accumulator(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_tags_of_metrics_columns():
    assert scalar_tag("d_loss") == "loss/d_loss" and scalar_tag("ma_gp") == "loss/ma_gp"
    assert scalar_tag("eval_colour") == "eval/colour" and scalar_tag("images_per_s") == "speed/images_per_s"
    assert scalar_tag("step") is None and scalar_tag("elapsed_s") is None and scalar_tag("eval_n") is None


def test_resumed_writer_continues_without_duplicate_steps(tmp_path):
    board = RunBoard(tmp_path)
    for step in range(1, 11):
        board.scalars(step, {"step": step, "d_loss": float(step), "g_loss": "", "images_per_s": 50.0})
    board.close()
    # the process died after a checkpoint at step 6: steps 7..10 are logged again by the resumed run
    board = RunBoard(tmp_path, resume_step=6)
    for step in range(7, 13):
        board.scalars(step, {"step": step, "d_loss": 100.0 + step})
    board.close()
    curves = read_scalars(tmp_path / "tensorboard")
    steps = [s for s, _ in curves["loss/d_loss"]]
    assert steps == list(range(1, 13))
    values = dict(curves["loss/d_loss"])
    assert values[6] == 6.0 and values[7] == 107.0 and values[12] == 112.0
    assert "loss/g_loss" not in curves  # empty cells are not points
    assert [s for s, _ in curves["speed/images_per_s"]] == list(range(1, 7))


def test_grid_with_captions_lrs_and_hparams(tmp_path):
    pixels = np.zeros((12, 20, 3), dtype=np.uint8)
    pixels[:, :10] = (255, 0, 0)
    png = tmp_path / "step-00000004.png"
    Image.fromarray(pixels).save(png)
    png.with_suffix(".txt").write_text("row 1, col 1: a red circle\nrow 1, col 2: a blue square\n", encoding="utf-8")
    board = RunBoard(tmp_path / "run")
    board.grid(4, png)
    board.learning_rates(4, {"G": 1e-4, "D": 4e-4})
    board.hparams({"model.rat.hidden": 16, "train.seed": 1, "list": [1, 2]}, {"clip_score": 12.5, "fid": ""})
    board.close()
    acc = _accumulator(tmp_path / "run" / "tensorboard")
    images = acc.Images("samples")
    assert [e.step for e in images] == [4] and (images[0].width, images[0].height) == (20, 12)
    from io import BytesIO

    decoded = np.asarray(Image.open(BytesIO(images[0].encoded_image_string)).convert("RGB"))
    assert np.array_equal(decoded, pixels)
    text = acc.Tensors("samples/captions/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "a red circle" in text and "a blue square" in text
    assert dict(read_scalars(tmp_path / "run" / "tensorboard")["lr/D"]) == {4: pytest.approx(4e-4)}
    hp = _accumulator(tmp_path / "run" / "tensorboard" / "hparams")
    assert [v.value for v in hp.Scalars("final/clip_score")] == [12.5]
    content = hp.PluginTagToContent("hparams")
    start = content["_hparams_/session_start_info"]
    assert b"model.rat.hidden" in start and b"train.seed" in start


def test_disabled_board_writes_nothing(tmp_path):
    board = RunBoard(tmp_path, enabled=False)
    board.scalars(1, {"d_loss": 1.0})
    board.grid(1, tmp_path / "missing.png")
    board.close()
    assert not (tmp_path / "tensorboard").exists()
