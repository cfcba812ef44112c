"""benchmarks/gpu_check.py: the CUDA check's plumbing, tested on the CPU (it has not run on a GPU here).

What these tests can show without a GPU: no CUDA -> a clear message and exit 3 with nothing run; a
failing stage -> FAIL in the table, its dependants SKIP, exit 1; and two real stages (tiny training
and kill + resume) run through the same code on the CPU and pass.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def test_without_cuda_it_says_so_and_runs_nothing(gpu_check, monkeypatch, capsys, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "w")]) == 3
    err = capsys.readouterr().err
    assert "no CUDA GPU is visible" in err and "nothing was run" in err
    assert not (tmp_path / "w").exists()
    assert gpu_check.main(["--only", "tiny-fp32,warp-drive"]) == 2
    assert "unknown stage warp-drive" in capsys.readouterr().err


def test_a_failing_stage_fails_the_check_and_skips_its_dependants(gpu_check, monkeypatch, tmp_path, capsys):
    def ok(ctx):
        return "fine, 12 img/s"

    def broken(ctx):
        raise gpu_check.StageFailed("exit 2: error: something specific")

    def buggy(ctx):
        raise ValueError("a bug in a check")

    fake = {"a": (ok, ()), "b": (broken, ()), "c": (ok, ("b",)), "d": (buggy, ()), "e": (ok, ("a",))}
    monkeypatch.setattr(gpu_check, "STAGES", fake)
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path)]) == 1
    table = (tmp_path / "gpu_check.md").read_text(encoding="utf-8")
    assert "| a | PASS |" in table and "fine, 12 img/s" in table
    assert "| b | FAIL |" in table and "error: something specific" in table
    assert "| c | SKIP |" in table and "needs b" in table
    assert "| d | FAIL |" in table and "ValueError: a bug in a check" in table
    assert "| e | PASS |" in table
    assert "FAIL" in capsys.readouterr().out

    monkeypatch.setattr(gpu_check, "STAGES", {"a": (ok, ()), "e": (ok, ("a",))})
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "ok")]) == 0


def test_stages_past_the_deadline_are_skipped_and_the_table_is_still_written(gpu_check, monkeypatch, tmp_path):
    ran = []

    def slow(ctx):
        ran.append("slow")
        time.sleep(0.3)
        return "took a while"

    def later(ctx):
        ran.append("later")
        return "never"

    monkeypatch.setattr(gpu_check, "STAGES", {"slow": (slow, ()), "later": (later, ())})
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path), "--deadline", "0.1"]) == 1
    table = (tmp_path / "gpu_check.md").read_text(encoding="utf-8")
    assert ran == ["slow"]
    assert "| slow | PASS |" in table and "| later | SKIP |" in table and "out of time (--deadline)" in table


def test_train_and_kill_resume_stages_pass_on_cpu(gpu_check, tmp_path):
    assert gpu_check.main(["--device", "cpu", "--only", "tiny-fp32,kill-resume", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "gpu_check.md").read_text(encoding="utf-8")
    assert "| tiny-fp32 | PASS |" in table and "4 steps" in table
    assert "| kill-resume | PASS |" in table and "once each" in table
    assert "not a CUDA check" in table
    # the run's log holds two commands: the one that was killed and the resume
    log = (tmp_path / "logs" / "kill-resume.log").read_text(encoding="utf-8")
    assert "resuming run" in log and log.count("$ ") == 2
