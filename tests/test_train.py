"""`ratlip train` on the tiny preset (CPU): run files, exact resume, checkpoints, export, refusals.

Every run here is a few steps of the tiny model on 32 px shapes generated into a temp folder.
Torch runs single-threaded in this module: on a shared 2-core machine two OpenMP threads of many
tiny ops make steps 10-100x slower whenever another process takes a core.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ratlip_cli.cli import app
from ratlip_cli.config import resolve_config
from ratlip_cli.errors import RatlipError
from ratlip_cli.train import Trainer, resume_config, train
from ratlip_cli.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from ratlip_cli.train.loop import EpochBatchSampler
from ratlip_cli.train.run import TIMING_COLUMNS, read_metrics
from state_compare import assert_same


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(tmp_path: Path, data_root: Path, name: str, *sets: str):
    return resolve_config(
        "tiny",
        overrides=[f"train.runs_dir={tmp_path / 'runs'}", f"data.root={data_root}", f"train.name={name}", *sets],
    )


def _rows(run_dir: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in read_metrics(run_dir / "metrics.csv")]


def _final_state(run_dir: Path) -> dict:
    path, state = latest_checkpoint(run_dir / "checkpoints")
    assert path is not None
    return state


def _assert_same_training_state(a: dict, b: dict) -> None:
    for key in ("generator", "discriminator", "head", "ema", "opt_g", "opt_d", "scaler", "rng", "noise_rng"):
        assert_same(a[key], b[key], key)
    for key in ("step", "epoch", "step_in_epoch", "images"):
        assert a[key] == b[key], key


# ------------------------------------------------------------------------------------------------


def test_cli_few_steps_finite_and_every_run_file(tmp_path):
    """`ratlip train tiny` on a fresh machine: shapes generated, finite losses, every run file written."""
    data = tmp_path / "fresh-data"
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        app,
        ["train", "tiny", "--set", f"train.runs_dir={runs}", "--set", f"data.root={data}", "--set", "train.name=smoke",
         "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    run = runs / "smoke"
    assert f"run directory: {run}" in result.output.replace("\n", "")
    assert (data / "manifest.json").is_file()  # generated automatically
    assert "step 4/4" in result.output  # plain log lines (not a terminal)
    for rel in ("config.yaml", "metrics.csv", "clip.safetensors", "export/generator.safetensors", "export/generator.json"):
        assert (run / rel).is_file(), rel
    rows = read_metrics(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    for r in rows:
        for col in ("d_loss", "d_real", "d_fake", "d_mis", "ma_gp", "g_loss", "g_clip", "images_per_s"):
            assert torch.isfinite(torch.tensor(float(r[col]))), (col, r)
        assert r["nonfinite"] == "0"
    assert int(rows[-1]["images"]) == 16
    grids = sorted(p.name for p in (run / "samples").glob("*.png"))
    assert grids == ["step-00000000.png", "step-00000002.png", "step-00000004.png"]
    text = (run / "samples" / "step-00000004.txt").read_text()
    assert "[train]" in text and "[test]" in text
    # keep_checkpoints: 2 -> steps 2 and 4
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2, 4]
    state = load_checkpoint(run / "checkpoints" / "ckpt-00000004.pt")
    assert state["config"]["train"]["name"] == "smoke" and state["package_version"]


def test_exact_resume_after_crash_and_after_sigterm(tmp_path, data_root):
    """6 steps straight == crash after step 5 (checkpoint at 4) + resume == SIGTERM at step 3 + resume."""
    sets = ("train.max_steps=6", "train.sample_every=0")
    train(tiny(tmp_path, data_root, "straight", *sets))

    class Crash(Exception):
        pass

    def crash_at_5(step):
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        train(tiny(tmp_path, data_root, "crashed", *sets), on_step=crash_at_5)
    crashed = tmp_path / "runs" / "crashed"
    assert [int(r["step"]) for r in read_metrics(crashed / "metrics.csv")] == [1, 2, 3, 4, 5]
    res = train(resume_config(crashed), resume=crashed)
    assert res.step == 6 and res.stopped_by == "max_steps"

    def sigterm_at_3(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = tiny(tmp_path, data_root, "killed", *sets, "train.checkpoint_every=100")
    res = train(cfg, on_step=sigterm_at_3)
    killed = tmp_path / "runs" / "killed"
    assert res.stopped_by == "SIGTERM" and res.step == 3
    assert [s for s, _ in list_checkpoints(killed / "checkpoints")] == [3]
    train(resume_config(killed), resume=killed)

    straight = tmp_path / "runs" / "straight"
    want_state, want_rows = _final_state(straight), _rows(straight)
    assert len(want_rows) == 6
    for run in (crashed, killed):
        _assert_same_training_state(want_state, _final_state(run))
        assert _rows(run) == want_rows


def test_truncated_checkpoint_is_never_latest(tmp_path, data_root):
    train(tiny(tmp_path, data_root, "trunc"))
    ckpts = tmp_path / "runs" / "trunc" / "checkpoints"
    newest = ckpts / "ckpt-00000004.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # a crash mid-write (without the atomic rename)
    (ckpts / ".ckpt-00000006.pt.tmp-999999").write_bytes(data[:100])  # a stale temp file
    path, state = latest_checkpoint(ckpts)
    assert path == ckpts / "ckpt-00000002.pt" and state["step"] == 2
    with pytest.raises(ValueError):
        load_checkpoint(newest)
    # A resume picks the valid one and continues from step 2.
    res = train(resume_config(tmp_path / "runs" / "trunc"), resume=tmp_path / "runs" / "trunc")
    assert res.step == 4


def test_checkpoint_write_failure_keeps_previous(tmp_path, monkeypatch):
    folder = tmp_path / "ck"
    for step in (1, 2):
        save_checkpoint({"step": step, **{k: {} for k in ("epoch", "config", "generator", "discriminator", "head",
                                                         "ema", "opt_g", "opt_d", "rng")}}, folder, keep=2)

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RatlipError, match="No space left on device.*ckpt-00000002.pt is intact"):
        save_checkpoint({"step": 3}, folder, keep=2)
    assert [s for s, _ in list_checkpoints(folder)] == [1, 2]
    assert not any(p.name.startswith(".") for p in folder.iterdir())  # temp file removed


def test_export_round_trip_gives_the_ema_images(tmp_path, data_root):
    from ratlip_cli.export import load_generator

    trainer = Trainer(tiny(tmp_path, data_root, "exp", "train.max_steps=2", "train.sample_every=0"))
    trainer.setup()
    trainer.run()
    run = tmp_path / "runs" / "exp"
    captions = ["a small red circle on a blue background", "a big white square on a gray background"]
    z = torch.randn(2, trainer.cfg.model.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        s = trainer.nets.text.encode(trainer.nets.text.tokenizer(captions))
        want = trainer.ema.module.eval()(z, s)
    for path in (run, run / "export" / "generator.safetensors"):
        loaded = load_generator(path, "cpu")
        assert not loaded.generator.training and loaded.step == 2
        with torch.no_grad():
            got = loaded.generator(z, loaded.embed(captions))
        assert torch.equal(got, want)
    # The EMA is not the live generator (it really is an average).
    with torch.no_grad():
        assert not torch.equal(trainer.nets.generator.eval()(z, s), want)

    doc = run / "export" / "generator.json"
    text = doc.read_text()
    doc.write_text(text.replace('"ngf": 8', '"ngf": 16'))
    with pytest.raises(RatlipError, match="does not match the architecture"):
        load_generator(run, "cpu")
    doc.unlink()
    with pytest.raises(RatlipError, match="no config beside it"):
        load_generator(run, "cpu")
    with pytest.raises(RatlipError, match="no exported generator"):
        load_generator(tmp_path, "cpu")


def test_resume_refuses_architecture_change_but_allows_budget(tmp_path, data_root):
    cfg = tiny(tmp_path, data_root, "arch", "train.max_steps=2", "train.sample_every=0")
    train(cfg)
    run = tmp_path / "runs" / "arch"
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--set", "model.rat.hidden=4"])
    assert result.exit_code == 2
    assert "model.rat.hidden" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--set", "clip.arch=ratlip-shapes"])
    assert result.exit_code == 2 and "clip.arch" in result.output
    again = resume_config(run, overrides=["train.max_steps=8", "train.log_every=5"])
    assert again.train.max_steps == 8 and again.train.name == "arch"
    # A new run may not reuse a run directory.
    with pytest.raises(RatlipError, match="--resume"):
        train(cfg)


def test_nonfinite_steps_are_skipped_then_stop_naming_the_checkpoint(tmp_path, data_root, monkeypatch):
    import ratlip_cli.models.ratlip.step as loop

    real = loop.d_hinge_loss

    def nan_after_two(*args, **kwargs):
        out = real(*args, **kwargs)
        if calls.append(1) or len(calls) > 2:
            out.total = out.total * float("nan")
        return out

    calls: list[int] = []
    monkeypatch.setattr(loop, "d_hinge_loss", nan_after_two)
    cfg = tiny(tmp_path, data_root, "nan", "train.max_steps=20", "train.max_nonfinite=3", "train.sample_every=0")
    with pytest.raises(RatlipError, match=r"non-finite.*ckpt-00000002\.pt"):
        train(cfg)
    rows = read_metrics(tmp_path / "runs" / "nan" / "metrics.csv")
    assert [r["nonfinite"] for r in rows] == ["0", "0", "1", "2"]
    assert rows[2]["d_loss"] == ""  # nothing to average in a skipped step
    # Skipped steps changed no weight: step-2 checkpoint == the weights after step 2 (nothing later saved).
    state = load_checkpoint(tmp_path / "runs" / "nan" / "checkpoints" / "ckpt-00000002.pt")
    assert state["step"] == 2


def test_clip_image_pass_skipped_when_clip_weight_is_zero(tmp_path, data_root):
    trainer = Trainer(tiny(tmp_path, data_root, "noclip", "train.clip_sim_weight=0"))
    trainer.setup()
    seen = []
    discriminator = trainer.nets.trainable["discriminator"]
    encode = discriminator.encode

    def spy(images, with_pooled=True):
        seen.append(with_pooled)
        return encode(images, with_pooled=with_pooled)

    discriminator.encode = spy
    batch = next(iter(trainer._loader()))
    out = trainer.train_step(batch)
    assert seen == [False, False] and out.losses is not None
    assert out.losses[trainer.loss_columns.index("g_clip")].item() == 0.0


def test_sampler_resumes_mid_epoch_with_the_same_order():
    full = EpochBatchSampler(50, 4, seed=3, rank=0, world_size=2)
    full.set_position(1, 0)
    batches = list(full)
    assert len(batches) == 50 // 8
    later = EpochBatchSampler(50, 4, seed=3, rank=0, world_size=2)
    later.set_position(1, 2)
    assert list(later) == batches[2:]
    other = EpochBatchSampler(50, 4, seed=3, rank=1, world_size=2)
    other.set_position(1, 0)
    mine = {i for b in batches for i in b}
    theirs = {i for b in other for i in b}
    assert not mine & theirs  # ranks see disjoint samples
    full.set_position(2, 0)
    assert list(full) != batches  # a new order each epoch


def test_ema_halflife_rampup_and_buffers():
    from ratlip_cli.train.ema import EmaGenerator

    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = EmaGenerator(net, halflife_kimg=1.0, rampup=0.05)
    # ramp-up: after 1000 images the half-life is min(1000, 50) = 50 images
    assert ema.beta(10, 1000) == pytest.approx(0.5 ** (10 / 50))
    assert ema.beta(10, 10**6) == pytest.approx(0.5 ** (10 / 1000))
    assert EmaGenerator(net, 1.0, 0.0).beta(10, 5) == pytest.approx(0.5 ** (10 / 1000))
    before = ema.module[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net.train()(torch.randn(8, 3))  # moves BatchNorm statistics
    beta = ema.update(10, 10**6)
    assert torch.allclose(ema.module[0].weight, before * beta + net[0].weight.detach() * (1 - beta))
    assert torch.equal(ema.module[1].running_mean, net[1].running_mean)


def test_gpus_option_relaunches_through_torchrun(monkeypatch, tmp_path):
    import ratlip_cli.train.command as command

    seen = {}

    def fake_execv(path, argv):
        seen["argv"] = argv
        raise SystemExit(0)

    monkeypatch.setattr(command.os, "execv", fake_execv)
    result = CliRunner().invoke(
        app, ["train", "tiny", "--gpus", "2", "--device", "cpu", "--set", f"train.runs_dir={tmp_path}"]
    )
    assert result.exit_code == 0, result.output
    argv = seen["argv"]
    assert argv[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc_per_node=2" in argv
    assert argv[argv.index("-m", 3) + 1 :][:3] == ["ratlip_cli", "train", "tiny"]
    assert "--gpus" not in argv and f"train.runs_dir={tmp_path}" in argv
    if not torch.cuda.is_available():
        result = CliRunner().invoke(app, ["train", "tiny", "--gpus", "2", "--device", "cuda"])
        assert result.exit_code == 2


def test_print_config_with_precision_and_device():
    result = CliRunner().invoke(app, ["train", "tiny", "--precision", "amp_bf16", "--device", "cpu", "--print-config"])
    assert result.exit_code == 0
    assert "precision: amp_bf16" in result.output and "device: cpu" in result.output
    bad = CliRunner().invoke(app, ["train", "tiny", "--precision", "fp8", "--print-config"])
    assert bad.exit_code == 2 and "train.precision" in bad.output


@pytest.mark.parametrize("precision", ["amp_bf16", "amp_fp16"])
def test_autocast_steps_are_finite(tmp_path, data_root, precision):
    trainer = Trainer(tiny(tmp_path, data_root, precision, f"train.precision={precision}"))
    trainer.setup()
    assert trainer.step_fn.scaler.is_enabled() == (precision == "amp_fp16")
    batch = next(iter(trainer._loader()))
    done = []
    for _ in range(4):  # fp16 may skip a step or two while the GradScaler finds its scale
        out = trainer.train_step(batch)
        if out.losses is not None:
            assert torch.isfinite(out.losses).all()
            done.append(True)
        else:
            assert out.overflow
    assert done


def test_missing_dataset_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(
        app, ["train", "cub", "--set", f"data.root={tmp_path / 'nothing'}", "--set", f"train.runs_dir={tmp_path / 'r'}"]
    )
    assert result.exit_code == 2 and "ratlip prepare" in result.output
    assert not (tmp_path / "r").exists()  # nothing written before the data check


def test_cnn_discriminator_with_the_clip_similarity_loss_trains(tmp_path, data_root):
    """`model.d_backbone=cnn` keeps the generator's CLIP loss (its CLIP embedding comes from the frozen CLIP)."""
    result = train(tiny(tmp_path, data_root, "cnn-clip", "model.d_backbone=cnn", "train.clip_sim_weight=4",
                        "train.max_steps=2", "train.log_every=1"))
    rows = read_metrics(result.run_dir / "metrics.csv")
    assert result.step == 2 and [int(r["step"]) for r in rows if r["g_clip"] != ""] == [1, 2]
    assert all(abs(float(r["g_clip"])) > 0 for r in rows if r["g_clip"] != "")  # the term is computed, not 0
