"""`ratlip bench` on the tiny preset, and the generator's speed rewrites against their plain formulas."""

from __future__ import annotations

import copy
import csv

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from ratlip_cli.bench import COLUMNS, BenchOptions, build_table, psnr_and_max_diff, run_bench
from ratlip_cli.cli import app
from ratlip_cli.models.ratlip.attention import ShuffleAttention
from ratlip_cli.models.ratlip.generator import ConvShuffle, GBlock, upsample2x_conv3x3
from ratlip_cli.models.ratlip.rat import AffineFeed

runner = CliRunner()
# oneDNN runs bf16 convolutions natively only with AVX512-BF16 or AMX; elsewhere it falls back to reference
# kernels about 200x slower (measured here with ONEDNN_MAX_CPU_ISA=AVX2: over 4 minutes instead of 20 s).
NATIVE_BF16 = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


# ---- the command --------------------------------------------------------------------------------


@pytest.mark.skipif(not NATIVE_BF16, reason="the bf16 rows need a CPU with AVX512-BF16 or AMX (oneDNN's "
                    "reference bf16 kernels take minutes)")
def test_bench_tiny_cli_writes_every_column(tmp_path):
    out = tmp_path / "bench.csv"
    args = ["bench", "tiny", "--hidden", "0,8", "--batch-sizes", "1,2", "--precision", "fp32,bf16",
            "--repeats", "1", "--warmup", "1", "--train-batch-size", "2", "--threads", "1", "--csv", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    # 2 hidden sizes x (2 precisions x 2 batch sizes generator rows + 2 training rows)
    assert len(rows) == 12
    for row in rows:
        assert all(row[c] != "" for c in COLUMNS if c not in ("max_abs_diff", "psnr_db")), row
        assert float(row["images_per_s"]) > 0
        assert float(row["gflop_per_image"]) > 0
        assert float(row["matmul_gflops"]) > 0
        assert float(row["roofline"]) > 0
        assert float(row["peak_mem_mb"]) > 0
        assert row["threads"] == "1"
    gen = [r for r in rows if r["phase"] == "generate"]
    train = [r for r in rows if r["phase"] == "train"]
    assert len(gen) == 8 and len(train) == 4
    # Equal configs (same h; precision and batch size do not change the work per image) count equal FLOPs.
    for hidden in ("0", "8"):
        assert len({r["gflop_per_image"] for r in gen if r["hidden"] == hidden}) == 1
        assert len({r["gflop_per_image"] for r in train if r["hidden"] == hidden}) == 1
    # bf16 rows carry the comparison with fp32 images of the same seeds; fp32 rows leave it empty.
    for r in gen:
        if r["precision"] == "bf16":
            assert 0 <= float(r["max_abs_diff"]) < 0.5 and float(r["psnr_db"]) > 20
        else:
            assert r["max_abs_diff"] == "" and r["psnr_db"] == ""
    # The printed table has every displayed column.
    for header in ("img/s", "GFLOP/img", "GFLOP/s", "of matmul", "peak MB", "delta MB", "PSNR dB"):
        assert header in result.output


def test_bench_table_has_every_column():
    row = {c: 1 for c in COLUMNS}
    table = build_table([row])
    headers = [col.header for col in table.columns]
    assert len(headers) == len(set(headers)) >= 13
    assert table.row_count == 1


def test_bench_same_config_same_flops_and_restores_threads():
    threads = torch.get_num_threads()
    opts = BenchOptions(preset="tiny", hiddens=[8], batch_sizes=[2], precisions=["fp32"], repeats=1, warmup=0,
                        skip_train=True, threads=1, show=False)
    a, b = run_bench(opts), run_bench(opts)
    assert a[0]["gflop_per_image"] == b[0]["gflop_per_image"] > 0
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize(
    "args, message",
    [
        (["--precision", "fp8"], "--precision"),
        (["--batch-sizes", "1,x"], "--batch-sizes"),
        (["--hidden", "-1"], "--hidden"),
        (["--set", "model.nope=1"], "model.nope"),
    ],
)
def test_bench_bad_options_are_one_line_errors(args, message):
    result = runner.invoke(app, ["bench", "tiny", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_psnr_and_max_diff():
    a = torch.zeros(1, 3, 4, 4)
    assert psnr_and_max_diff(a, a)[1] == float("inf")
    diff, psnr = psnr_and_max_diff(a + 0.2, a)  # 0.1 in [0, 1] pixels
    assert diff == pytest.approx(0.1, abs=1e-6) and psnr == pytest.approx(20.0, abs=1e-3)


# ---- speed rewrites of the generator: the same function as the plain formulas ------------------


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample2x_conv3x3_equals_interpolate_then_conv(channels_last):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 6, 7, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 5, 3, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(4, generator=gen, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w.requires_grad_(True)
    ref = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, bias, padding=1)
    out = upsample2x_conv3x3(x, w, bias)
    assert out.shape == ref.shape == (2, 4, 12, 14)
    torch.testing.assert_close(out, ref)
    g = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    grads_ref = torch.autograd.grad(ref, (x, w), g)
    grads = torch.autograd.grad(out, (x, w), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)


def _shuffle_attention_reference(sa: ShuffleAttention, x: torch.Tensor) -> torch.Tensor:
    """SA-Net as written in the paper's code: split, two gates, concatenate, channel shuffle."""
    b, c, h, w = x.shape
    x = x.reshape(b * sa.groups, c // sa.groups, h, w)
    x_c, x_s = x.chunk(2, dim=1)
    x_c = x_c * torch.sigmoid(x_c.mean(dim=(2, 3), keepdim=True) * sa.c_weight + sa.c_bias)
    x_s = x_s * torch.sigmoid(sa.norm(x_s) * sa.s_weight + sa.s_bias)
    out = torch.cat([x_c, x_s], dim=1).reshape(b, c, h, w)
    return ShuffleAttention.channel_shuffle(out, 2)


@pytest.mark.parametrize("channels_last", [False, True])
def test_shuffle_attention_equals_reference(channels_last):
    torch.manual_seed(0)
    sa = ShuffleAttention(24, 3).double()
    with torch.no_grad():
        for p in sa.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = torch.randn(2, 24, 5, 6, dtype=torch.float64) * 2 + 1
    res = torch.randn(2, 24, 5, 6, dtype=torch.float64)
    if channels_last:
        x, res = (t.contiguous(memory_format=torch.channels_last) for t in (x, res))
    x.requires_grad_(True)
    ref = _shuffle_attention_reference(sa, x)
    torch.testing.assert_close(sa(x), ref)
    out = sa(x, residual=res)
    torch.testing.assert_close(out, res + ref)
    g = torch.randn(ref.shape, dtype=torch.float64)
    grads_ref = torch.autograd.grad(res + ref, [x, *sa.parameters()], g)
    grads = torch.autograd.grad(out, [x, *sa.parameters()], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # the inference path (in-place gate) too
        torch.testing.assert_close(sa(x, residual=res), res + ref)


def _conv_reference(conv, x: torch.Tensor) -> torch.Tensor:
    """The authors' Conv_shuffle (conv -> BN -> LeakyReLU() -> SA) or GALIP's plain conv, as written."""
    if isinstance(conv, ConvShuffle):
        y = F.leaky_relu(conv.bn(F.conv2d(x, conv.conv.weight, None, padding=1)), 0.01)
        return _shuffle_attention_reference(conv.attn, y)
    return conv.conv(x)


def _gblock_reference(block: GBlock, x: torch.Tensor, feed: AffineFeed) -> torch.Tensor:
    """The authors' (and GALIP's) G_Block as written: upsample first, then every layer at full size."""
    if x.shape[-1] != block.size:
        x = F.interpolate(x, size=(block.size, block.size), mode="nearest")
    r = _conv_reference(block.c1, block.fuse1(x, feed))
    r = _conv_reference(block.c2, block.fuse2(r, feed))
    return block.shortcut(x) + r


@pytest.mark.parametrize("family", ["ratlip", "galip"])
@pytest.mark.parametrize("in_size, size, in_ch, out_ch", [(4, 8, 8, 4), (7, 8, 8, 8), (4, 7, 4, 4), (6, 6, 8, 4)])
@pytest.mark.parametrize("train", [True, False])
def test_gblock_equals_reference(in_size, size, in_ch, out_ch, train, family):
    torch.manual_seed(0)
    block = GBlock(family, in_ch, out_ch, size, cond_dim=6, state_dim=0, sa_groups=2).double()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.2 * torch.randn_like(p))
        for m in block.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    block.train(train)
    x = torch.randn(3, in_ch, in_size, in_size, dtype=torch.float64, requires_grad=True)
    cond = torch.randn(3, 6, dtype=torch.float64)
    twin = copy.deepcopy(block)  # the same weights and BatchNorm statistics
    ref = _gblock_reference(twin, x, AffineFeed(cond=cond))
    out = block(x, AffineFeed(cond=cond))
    torch.testing.assert_close(out, ref)
    for name, buf in block.named_buffers():
        torch.testing.assert_close(buf, dict(twin.named_buffers())[name])
    g = torch.randn(ref.shape, dtype=torch.float64)
    grads_ref = torch.autograd.grad(ref, [x, *twin.parameters()], g, allow_unused=True)
    grads = torch.autograd.grad(out, [x, *block.parameters()], g, allow_unused=True)
    for a, b in zip(grads, grads_ref):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b)
