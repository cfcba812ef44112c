"""benchmarks/gpu_profile.py: the profile's plumbing, run reduced on the CPU (tiny preset, batch 2, eager)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_profile.py"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gp():
    spec = importlib.util.spec_from_file_location("gpu_profile", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_profile"] = module
    spec.loader.exec_module(module)
    return module


def test_categories_and_busy_union(gp):
    assert gp.category("aten::mkldnn_convolution") == "conv"
    assert gp.category("sm90_xmma_gemm_bf16bf16_bf16f32") == "gemm"
    assert gp.category("void at::native::nchwToNhwcKernel<float>") == "layout"
    assert gp.category("triton_poi_fused_add_mul_0") == "triton-pointwise"
    assert gp.category("triton_red_fused_sum_1") == "triton-reduction"
    assert gp.category("void at::native::(anonymous)::fused_adam_kernel") == "optimizer"
    assert gp.category("aten::add_") == "elementwise"
    assert gp.category("mystery") == "other"
    assert gp._busy_us([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == 4


def test_cpu_run_profiles_generator_and_step(gp, tmp_path):
    rc = gp.main(["--device", "cpu", "--preset", "tiny", "--precision", "fp32", "--batches", "2", "--modes", "eager",
                  "--iters", "1", "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "gpu_profile.json").read_text())
    rows = {(r["stage"], r["mode"], r["batch"]): r for r in report["rows"]}
    assert set(rows) == {("generator", "eager", 2), ("step", "eager", 2)}
    for r in rows.values():
        assert r["status"] == "OK" and r["img_s"] > 0 and r["kernels"] > 100
        assert sum(r["by_category_count"].values()) == r["kernels"]
        assert r["by_category_ms"]["conv"] > 0 and 0 < r["busy_fraction"]
        assert r["top_kernels"] and len(r["top_kernels"][0]) == 3
    step = rows[("step", "eager", 2)]
    assert step["host_reads"] == {}  # the step's Python reads no tensor value (tests/test_step_syncs.py)
    assert {"text", "D.encode", "G.forward", "ma_gp", "backward.D", "backward.G", "opt_d", "opt_g"} <= set(step["phases"])
    assert step["by_category_ms"]["optimizer"] > 0


def test_no_cuda_message(gp, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    with pytest.raises(SystemExit, match="no CUDA GPU is visible"):
        gp.main(["--out", str(tmp_path)])
