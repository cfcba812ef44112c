"""benchmarks/vs_authors.py and benchmarks/gpu_session.sh: the parts that run without the authors' code or a GPU.

The benchmark itself needs a checkout of the authors' repositories (never committed), so it is run by
hand (docs/benchmarks.md); here: the alternating order, the ratio of each round, the table, the
text replacements that must match exactly once, and the GPU session's no-CUDA exit.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def va():
    spec = importlib.util.spec_from_file_location("vs_authors", ROOT / "benchmarks" / "vs_authors.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["vs_authors"] = module
    spec.loader.exec_module(module)
    return module


def test_alternate_reverses_the_order_every_other_round(va):
    order: list[str] = []
    fns = {"ratlip": lambda: order.append("r"), "authors": lambda: order.append("a")}
    times = va.alternate(fns, torch.device("cpu"), warmup=1, rounds=4)
    assert order == ["r", "a", "r", "a", "a", "r", "r", "a", "a", "r"]
    assert [len(v) for v in times.values()] == [4, 4]


def test_row_takes_the_median_of_per_round_ratios(va):
    times = {"ratlip": [1.0, 2.0, 1.0], "authors": [2.0, 2.0, 4.0]}
    r = va.row("train step", "fp32", 8, times, {"ratlip": 10.0, "authors": 20.0})
    assert r["time_ratio"] == 0.5 and r["time_ratio_range"] == [0.25, 1.0]
    assert r["ratlip_img_s"] == 8.0 and r["authors_img_s"] == 4.0 and r["rounds"] == 3
    table = va.markdown([r, {**r, "precision": "mixed"}]).splitlines()
    assert len(table) == 4 and "| train step | fp32 | 8 | 8.0 | 4.0 | 0.500 | 0.250-1.000 | 10.0 | 20.0 |" == table[2]
    assert "bf16 (theirs fp16)" in table[3]


def test_exec_refuses_a_replacement_that_does_not_match_once(va, tmp_path):
    f = tmp_path / "their.py"
    f.write_text("x = 1\ny = x.cuda_thing()\n")
    m = va._exec(f, "their_module", {"x.cuda_thing()": "x + 1"})
    assert m.y == 2
    f.write_text("x = 1\n")
    with pytest.raises(SystemExit, match="expected 1 x"):
        va._exec(f, "their_module2", {"x.cuda_thing()": "x"})


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine")
def test_gpu_session_stops_with_exit_3_without_cuda(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh")], capture_output=True, text=True,
                         env={**os.environ, "OUT": str(tmp_path / "gs")}, timeout=60)
    assert out.returncode == 3 and "no CUDA GPU is visible" in out.stdout
    assert (tmp_path / "gs" / "check.log").is_file()
