"""Faults survived, nothing lost: a full disk while saving, images that rot during training, SIGTERM
during a checkpoint write, and crashes in prepare, eval's cache and an ablation cell.

Disk faults are injected at the one place bytes reach a disk, `ratlip_cli.files._fill`.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ratlip_cli import files
from ratlip_cli.cli import app
from ratlip_cli.data.prepared import load_prepared
from ratlip_cli.errors import RatlipError
from ratlip_cli.export import load_generator
from ratlip_cli.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from ratlip_cli.train.run import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from ratlip_cli.data import generate_shapes

    root = tmp_path_factory.mktemp("faultdata")
    generate_shapes(root, size=32, train_per_combo=1, test_per_combo=1, novel_per_combo=1)
    return root


def full_disk(monkeypatch, match: str) -> list[str]:
    """Every write whose temp file name contains ``match`` fails with ENOSPC after a few bytes."""
    real, hits = files._fill, []

    def fill(tmp, write, fsync=True):
        if match in tmp.name:
            hits.append(tmp.name)
            with open(tmp, "wb") as fh:
                fh.write(b"PK\x03\x04partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tmp, write, fsync)

    monkeypatch.setattr(files, "_fill", fill)
    return hits


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error:"), result.output
    assert len([ln for ln in lines if ln.startswith("error:")]) == 1
    for fragment in fragments:
        assert fragment in result.output.replace("\n", ""), (fragment, result.output)
    return lines[-1]


def train_args(tmp_path: Path, data: Path, name: str, *sets: str) -> list[str]:
    args = ["train", "tiny", "--set", f"train.runs_dir={tmp_path / 'runs'}", "--set", f"data.root={data}",
            "--set", f"train.name={name}", "--set", "train.sample_every=0"]
    for s in sets:
        args += ["--set", s]
    return args


def no_temps(folder: Path) -> bool:
    return not any(files.is_temp(p) for p in folder.rglob("*"))


# ------------------------------------------------------------------------------------------ disk full


def test_enospc_while_checkpointing_stops_and_keeps_the_previous_checkpoint(tmp_path, data_root, monkeypatch):
    hits = full_disk(monkeypatch, "ckpt-00000004")
    result = CliRunner().invoke(app, train_args(tmp_path, data_root, "full"))
    one_line_error(result, "No space left on device", "ckpt-00000002.pt is intact",
                   f"ratlip train --resume {tmp_path / 'runs' / 'full'}")
    assert hits == [".ckpt-00000004.pt" + files.TEMP_MARK + str(os.getpid())]
    run = tmp_path / "runs" / "full"
    path, state = latest_checkpoint(run / "checkpoints")
    assert path.name == "ckpt-00000002.pt" and state["step"] == 2
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2]
    assert no_temps(run) and not (run / "train.lock").exists()
    monkeypatch.undo()
    result = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "checkpoints" / "ckpt-00000004.pt")["step"] == 4


def test_enospc_while_exporting_leaves_the_previous_export_whole(tmp_path, data_root, monkeypatch):
    real, calls = files._fill, []

    def fill(tmp, write, fsync=True):  # the second export (step 4) runs out of space on its JSON
        if "generator.json" in tmp.name:
            calls.append(tmp.name)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(tmp, write, fsync)

    monkeypatch.setattr(files, "_fill", fill)
    result = CliRunner().invoke(app, train_args(tmp_path, data_root, "fullexp"))
    run = tmp_path / "runs" / "fullexp"
    one_line_error(result, "No space left on device", f"{run / 'export'} is unchanged")
    loaded = load_generator(run)  # weights and JSON still belong together (sha256 verified)
    assert loaded.step == 2
    assert json.loads((run / "export" / "generator.json").read_text())["step"] == 2
    assert no_temps(run)


# ------------------------------------------------------------------------------- unreadable images


def _train_keys_in_batches(data_root: Path, batches: range, batch_size: int = 4) -> list[str]:
    """Paths (relative to the dataset) of the train images the tiny run reads in these batches of epoch 0."""
    from ratlip_cli.config import resolve_config
    from ratlip_cli.train.loop import EpochBatchSampler

    prepared = load_prepared(data_root)
    rows = prepared.split_images("train")
    seed = resolve_config("tiny").train.seed
    perm = EpochBatchSampler(len(rows), batch_size, seed).permutation(0).tolist()
    return [rows["path"][perm[i]] for b in batches for i in range(b * batch_size, (b + 1) * batch_size)]


def test_image_unreadable_during_training_is_skipped_warned_and_counted(tmp_path, data_root):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    victims = _train_keys_in_batches(data, range(2, 3))[:2]  # two images of the third batch

    def rot(step):
        if step == 1:
            (data / victims[0]).write_bytes(b"not an image any more")
            (data / victims[1]).unlink()

    from ratlip_cli.config import resolve_config
    from ratlip_cli.train import resume_config, train

    cfg = resolve_config("tiny", overrides=[f"train.runs_dir={tmp_path / 'runs'}", f"data.root={data}",
                                            "train.name=rot", "train.sample_every=0"])
    result = train(cfg, on_step=rot)
    assert result.step == 4
    rows = read_metrics(tmp_path / "runs" / "rot" / "metrics.csv")
    assert [r["unreadable"] for r in rows] == ["0", "0", "2", "2"]
    state = load_checkpoint(tmp_path / "runs" / "rot" / "checkpoints" / "ckpt-00000004.pt")
    assert state["unreadable"] == sorted(victims)
    # A resumed run keeps the count (and does not warn about them again).
    res = train(resume_config(tmp_path / "runs" / "rot", overrides=["train.max_steps=5"]), resume=tmp_path / "runs" / "rot")
    assert res.step == 5 and read_metrics(tmp_path / "runs" / "rot" / "metrics.csv")[-1]["unreadable"] >= "2"


def test_warning_names_the_image_once(tmp_path, data_root):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    victim = _train_keys_in_batches(data, range(1, 2))[0]
    (data / victim).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = CliRunner().invoke(app, train_args(tmp_path, data, "warn", "train.max_steps=2"))
    assert result.exit_code == 0, result.output
    text = result.output.replace("\n", "")
    assert text.count("skipping unreadable training image") == 1 and str(data / victim) in text


def test_too_many_unreadable_images_stop_with_a_clear_error(tmp_path, data_root):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    for rel in _train_keys_in_batches(data, range(2, 3))[:3]:
        (data / rel).write_bytes(b"")
    result = CliRunner().invoke(app, train_args(tmp_path, data, "rotten", "train.max_unreadable=2"))
    one_line_error(result, "3 training images could not be read", "train.max_unreadable=2", "prepare it again")
    run = tmp_path / "runs" / "rotten"
    assert latest_checkpoint(run / "checkpoints")[1]["step"] == 2  # the work before it is kept


# ------------------------------------------------------------------------- SIGTERM during a write


HOLD_WRITE = """
import sys, time
import ratlip_cli.files as files
real, victim = files._fill, sys.argv[1]
def fill(tmp, write, fsync=True):
    if victim in tmp.name:
        print("WRITING", flush=True)
        time.sleep(2)  # the parent's SIGTERM arrives now
    return real(tmp, write, fsync)
files._fill = fill
from ratlip_cli.cli import app
sys.argv = ["ratlip", *sys.argv[2:]]
app()
"""


@pytest.mark.parametrize("max_steps, victim", [(4, "ckpt-00000002"), (3, "ckpt-00000003")],
                         ids=["periodic-checkpoint", "final-checkpoint"])
def test_sigterm_during_a_checkpoint_write_leaves_a_complete_checkpoint(tmp_path, data_root, max_steps, victim):
    args = train_args(tmp_path, data_root, "term", f"train.max_steps={max_steps}", "train.log_every=0")
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HOLD_WRITE, victim, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for line in proc.stdout:
        if line.strip() == b"WRITING":
            proc.send_signal(signal.SIGTERM)
            break
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode in (128 + signal.SIGTERM, -signal.SIGTERM), out
    run = tmp_path / "runs" / "term"
    step = int(victim.split("-")[1])
    path, state = latest_checkpoint(run / "checkpoints")
    assert path.name == f"{victim}.pt" and state["step"] == step  # the interrupted write completed
    assert no_temps(run)
    result = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    assert latest_checkpoint(run / "checkpoints")[1]["step"] == max_steps
    assert load_generator(run).step == max_steps


# ------------------------------------------------------------- crashes leave nothing that looks done


def test_crash_during_prepare_leaves_no_dataset_and_rerun_completes(tmp_path, monkeypatch):
    from PIL import Image

    src = tmp_path / "raw"
    src.mkdir()
    for i in range(8):
        Image.new("RGB", (20 + i, 18), (i * 30, 90, 40)).save(src / f"im{i}.png")
        (src / f"im{i}.txt").write_text(f"image {i}\nagain {i}\n")
    args = ["prepare", "folder", "--src", str(src), "--size", "16", "--workers", "1", "--out"]
    assert CliRunner().invoke(app, [*args, str(tmp_path / "ref")]).exit_code == 0
    out = tmp_path / "out"
    for victim in ("im5.jpg", "captions.csv", "manifest.json"):  # an image, the index, the manifest (last)
        full_disk(monkeypatch, victim)
        result = CliRunner().invoke(app, [*args, str(out)])
        monkeypatch.undo()
        one_line_error(result, "No space left on device")
        assert not (out / "manifest.json").exists()
        with pytest.raises(RatlipError, match="no prepared dataset"):
            load_prepared(out)
        assert no_temps(out)
    result = CliRunner().invoke(app, [*args, str(out)])
    assert result.exit_code == 0, result.output
    ref = tmp_path / "ref"
    for rel in ["images.csv", "captions.csv", *(f"images/im{i}.jpg" for i in range(8))]:
        assert (out / rel).read_bytes() == (ref / rel).read_bytes(), rel
    assert load_prepared(out).manifest["counts"] == load_prepared(ref).manifest["counts"]


def test_crash_while_caching_eval_statistics_leaves_no_cache(tmp_path, data_root, monkeypatch):
    from ratlip_cli.config import resolve_config
    from ratlip_cli.train import train

    cfg = resolve_config("tiny", overrides=[f"train.runs_dir={tmp_path / 'runs'}", f"data.root={data_root}",
                                            "train.name=ev", "train.max_steps=1", "train.sample_every=0"])
    run = train(cfg).run_dir
    cache = tmp_path / "cache"
    args = ["eval", "--run", str(run), "--num", "8", "--quiet", "--set", f"eval.cache_dir={cache}"]
    full_disk(monkeypatch, ".npz")
    one_line_error(CliRunner().invoke(app, args), "No space left on device")
    assert not cache.exists() or not any(cache.iterdir())  # neither a cache file nor a temp file
    assert not (run / "eval.csv").exists()
    monkeypatch.undo()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(list(cache.glob("*.npz"))) == 1 and (run / "eval.csv").is_file()


def test_crash_in_an_ablation_cell_is_not_taken_as_done(tmp_path, data_root, monkeypatch):
    from ratlip_cli import ablate
    from ratlip_cli.ablate import AblateOptions

    out = tmp_path / "abl"
    opts = AblateOptions(preset="tiny", hiddens="4,8", steps=2, eval_num=8, metrics="shapes", out=out,
                         progress=False, sets=[f"data.root={data_root}", f"eval.cache_dir={tmp_path / 'cache'}"])
    real = ablate.evaluate_cell

    def crash_on_h8(run_dir, *a, **k):
        if run_dir.name.startswith("h8-"):
            raise RuntimeError("simulated crash while evaluating")
        return real(run_dir, *a, **k)

    monkeypatch.setattr(ablate, "evaluate_cell", crash_on_h8)
    with pytest.raises(RuntimeError):
        ablate.run_ablation(opts)
    rows = ablate.read_rows(out / "ablation.csv")
    assert [(r["h"], r["seed"]) for r in rows] == [("4", "0")]  # h=8 trained but not recorded

    full_disk(monkeypatch, "ablation.csv")  # now the disk fills while recording h=8
    monkeypatch.setattr(ablate, "evaluate_cell", real)
    with pytest.raises(RatlipError, match="No space left on device"):
        ablate.run_ablation(opts)
    assert [(r["h"], r["seed"]) for r in ablate.read_rows(out / "ablation.csv")] == [("4", "0")]
    monkeypatch.undo()
    assert ablate.run_ablation(opts) == 0
    rows = ablate.read_rows(out / "ablation.csv")
    assert [(r["h"], r["seed"]) for r in rows] == [("4", "0"), ("8", "0")]
    assert all(r["shapes_all"] != "" and r["steps"] == "2" for r in rows)
    assert [r["step"] for r in read_metrics(out / "h8-s0" / "metrics.csv")] == ["1", "2"]  # not retrained
    assert no_temps(out)
