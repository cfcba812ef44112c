"""One writer per run folder: a live trainer's lock refuses a second one; a dead one's is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ratlip_cli.cli import app
from ratlip_cli.errors import RatlipError
from ratlip_cli.train.lock import LOCK_FILE, RunLock

pytestmark = pytest.mark.usefixtures("one_thread")


def _train_args(runs: Path, data: Path, name: str, *extra: str) -> list[str]:
    return ["train", "tiny", "--set", f"train.runs_dir={runs}", "--set", f"data.root={data}",
            "--set", f"train.name={name}", "--set", "train.sample_every=0", *extra]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.output


def test_stale_lock_of_a_dead_pid_is_taken_over_with_a_warning(tmp_path, data_root):
    run = tmp_path / "runs" / "stale"
    run.mkdir(parents=True)
    (run / LOCK_FILE).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    result = CliRunner().invoke(app, _train_args(tmp_path / "runs", data_root, "stale", "--set", "train.max_steps=1"))
    assert result.exit_code == 0, result.output
    assert "taking over the stale lock" in result.output and "is gone" in result.output
    assert not (run / LOCK_FILE).exists()  # released at the end
    assert (run / "export" / "generator.safetensors").is_file()


def test_lock_of_a_live_pid_or_another_host_is_refused(tmp_path, data_root):
    run = tmp_path / "runs" / "held"
    run.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        result = CliRunner().invoke(app, _train_args(tmp_path / "runs", data_root, "held", "--set", "train.max_steps=1"))
        _one_line_error(result, f"pid {sleeper.pid} on host {socket.gethostname()}")
    finally:
        sleeper.kill()
        sleeper.wait()
    (run / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere.example"}))
    result = CliRunner().invoke(app, _train_args(tmp_path / "runs", data_root, "held", "--set", "train.max_steps=1"))
    _one_line_error(result, "on another host (pid 1 on host elsewhere.example")
    assert f"delete {run / LOCK_FILE}" in result.output.replace("\n", "")
    assert not (run / "metrics.csv").exists()  # nothing written by the refused trainers


def test_second_trainer_and_second_resume_of_a_running_run_are_refused(tmp_path, data_root):
    """A real `ratlip train` subprocess holds the run; a same-named trainer and a --resume both get one line."""
    runs = tmp_path / "runs"
    run = runs / "busy"
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ratlip_cli", *_train_args(runs, data_root, "busy", "--set", "train.max_steps=100000",
                                                          "--set", "train.checkpoint_every=1", "--set", "train.log_every=0")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 300
        while not list((run / "checkpoints").glob("ckpt-*.pt")):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "the trainer wrote no checkpoint in 300 s"
            time.sleep(0.2)
        holder = json.loads((run / LOCK_FILE).read_text())
        assert holder["pid"] == proc.pid and holder["host"] == socket.gethostname()
        result = CliRunner().invoke(app, _train_args(runs, data_root, "busy", "--set", "train.max_steps=1"))
        _one_line_error(result, f"is being written by another `ratlip train` (pid {proc.pid} on host")
        result = CliRunner().invoke(app, ["train", "--resume", str(run)])
        _one_line_error(result, f"pid {proc.pid}")
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert not (run / LOCK_FILE).exists()
    # The run is free again: the resume continues it.
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--set", "train.max_steps=1"])
    assert result.exit_code == 0 and "nothing to do" in result.output, result.output


def test_sigkilled_holder_does_not_block_the_next_writer(tmp_path):
    """The kernel drops a dead process's record lock; its file (pid dead) is taken over."""
    root = tmp_path / "run"
    code = ("import sys, time; from ratlip_cli.train.lock import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout.readline().strip() == b"locked"
        with pytest.raises(RatlipError, match=f"pid {proc.pid}"):
            RunLock(root).acquire()
    finally:
        proc.kill()
        proc.wait()
    lock = RunLock(root).acquire()
    assert json.loads((root / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (root / LOCK_FILE).exists()
