"""Where the time of the generator and the training step goes, by kernel category, in one short call.

    python benchmarks/gpu_profile.py --out gp                          # a CUDA GPU: cub, bf16, batches 32,64,128
    python benchmarks/gpu_profile.py --out gp --deadline 240           # start no stage after 240 s
    python benchmarks/gpu_profile.py --device cpu --preset tiny --batches 2 --out gp   # the reduced CPU run

For each batch size of ``--batches``, eager, then compiled (`torch.compile` of the generator: alone,
and inside the training step, where the discriminator and MA-GP's double backward stay eager), it
times the generator (eval, inference mode) and the family's training step (`ratlip train`'s step
object: text encoding, D step with MA-GP, G step; synthetic batch), then profiles one call of each
with `torch.profiler` and prints:

- time by kernel category (conv, gemm, attention, norm, layout, elementwise, triton, optimizer, ...),
  kernel count, CPU-side launch calls, the GPU busy fraction (union of kernel intervals / wall time),
- host syncs seen by the profiler (`cudaStreamSynchronize`, `_local_scalar_dense` (what `.item()` runs),
  blocking `cudaMemcpy`, `aten::nonzero`) and, counted apart, the Python-level reads of a tensor
  (`.item()`, `bool()`, `.cpu()`, ... as tests/test_step_syncs.py counts them),
- the top kernels by time; for the step, the time of its phases (text, D.encode, G.forward, ma_gp,
  backward D / G, the optimisers).

On CPU there are no GPU kernels: the same summary is made of the CPU operators' self time (the
"kernels" are aten operators; "busy" is their summed self time over the wall time). That is the
reduced version tests/test_gpu_profile.py runs in seconds; its numbers say nothing about a GPU.
There the profiler also shows one `_local_scalar_dense` per parameter tensor and optimiser step:
torch's CPU fused Adam reads each step counter in C++ (no device, so no sync; the CUDA kernel reads
none), while the step's own Python code reads no tensor (``host reads``: 0).

Compiled stages come last in each batch size's order of stages and the compiled ones for batches other than
the first run only while ``--deadline`` allows (each batch size is a recompile). Everything is written
to OUT/gpu_profile.json; ``--trace`` also writes Chrome traces.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# (category, regex on a CUDA kernel name or a CPU aten operator), the first match wins.
CATEGORIES = [
    ("layout", r"nchwToNhwc|nhwcToNchw|transpose|permute|aten::contiguous|aten::_to_copy|aten::clone"),
    ("conv", r"conv|fprop|dgrad|wgrad|implicit_gemm|implicit_convolve|winograd|xmma_.*nhwc|cudnn|mkldnn"),
    ("attention", r"flash|fmha|attention|sdpa|aten::_scaled_dot"),
    ("gemm", r"gemm|nvjet|cutlass|cublas|sm90_xmma|sm80_xmma|splitK|aten::(mm|addmm|bmm|baddbmm|linear|matmul)\b"),
    ("norm", r"batch_norm|batchnorm|bn_|group_norm|GroupNorm|RowwiseMoments|ComputeFusedParams|layer_norm|"
             r"LayerNorm|welford"),
    ("upsample", r"upsample"),
    ("optimizer", r"multi_tensor|fused_adam|FusedAdam|foreach|_fused_adam"),
    ("cat", r"CatArray|cat_|aten::cat\b"),
    ("reduce", r"reduce_kernel|Reduce|aten::(sum|mean|norm|amax|all|any)\b"),
    ("copy", r"copy|Copy|aten::copy_"),
    ("triton-reduction", r"triton_(per|red)_"),
    ("triton-pointwise", r"triton_poi_|triton_"),
    ("elementwise", r"elementwise|vectorized|unrolled|aten::"),
]
# aten::item is counted through the _local_scalar_dense it calls (once per read)
SYNC_EVENTS = r"Synchronize|_local_scalar_dense|cudaMemcpy(?!Async)|aten::nonzero"
LAUNCH_EVENTS = r"cudaLaunchKernel|cuLaunchKernel|cudaGraphLaunch|cudaLaunchKernelExC"
HOST_READS = ("item", "__bool__", "tolist", "__float__", "__int__", "__index__", "cpu", "numpy")


def category(name: str) -> str:
    """The category of a kernel or operator name (CATEGORIES' first match, else 'other')."""
    for cat, rx in CATEGORIES:
        if re.search(rx, name):
            return cat
    return "other"


def _busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals."""
    busy, cur = 0.0, None
    for s, e in sorted(intervals):
        if cur is None or s > cur[1]:
            if cur is not None:
                busy += cur[1] - cur[0]
            cur = [s, e]
        else:
            cur[1] = max(cur[1], e)
    if cur is not None:
        busy += cur[1] - cur[0]
    return busy


def summarize(events: list, wall_s: float, on_gpu: bool, top: int = 12) -> dict[str, Any]:
    """Time by category, kernel count, busy fraction, host syncs and top kernels of one profiled call.

    ``events``: the profiler's FunctionEvents. On GPU the kernels are the CUDA events; on CPU the aten
    operators' self time stands for them."""
    from torch.autograd import DeviceType

    cpu = [e for e in events if e.device_type == DeviceType.CPU]
    if on_gpu:
        kernels = [(e.name, e.time_range.elapsed_us(), e.time_range.start, e.time_range.end)
                   for e in events if e.device_type == DeviceType.CUDA]
        busy = _busy_us([(k[2], k[3]) for k in kernels])
    else:
        kernels = [(e.name, e.self_cpu_time_total, e.time_range.start, e.time_range.end)
                   for e in cpu if e.name.startswith("aten::") and e.self_cpu_time_total > 0]
        busy = sum(k[1] for k in kernels)
    cats: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    names: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for name, us, _, _ in kernels:
        for d, key in ((cats, category(name)), (names, name[:90])):
            d[key][0] += 1
            d[key][1] += us
    wall_ms = wall_s * 1e3
    return {
        "kernels": len(kernels),
        "launch_calls": sum(1 for e in cpu if re.search(LAUNCH_EVENTS, e.name)),
        "busy_ms": round(busy / 1e3, 3), "wall_ms": round(wall_ms, 3),
        "busy_fraction": round(busy / 1e3 / wall_ms, 4) if wall_ms else None,
        "by_category_ms": {k: round(v[1] / 1e3, 3) for k, v in sorted(cats.items(), key=lambda kv: -kv[1][1])},
        "by_category_count": {k: int(v[0]) for k, v in sorted(cats.items(), key=lambda kv: -kv[1][1])},
        "top_kernels": [[k, int(v[0]), round(v[1] / 1e3, 3)] for k, v in sorted(names.items(), key=lambda kv: -kv[1][1])[:top]],
        "host_syncs": dict(collections.Counter(e.name for e in cpu if re.search(SYNC_EVENTS, e.name))),
    }


@contextlib.contextmanager
def counted_host_reads():
    """Python-level reads of a tensor's value while inside (`.item()`, `bool()`, `.cpu()`, ...), as a Counter."""
    seen: collections.Counter = collections.Counter()
    originals = {n: getattr(torch.Tensor, n) for n in HOST_READS}

    def counting(name: str):
        real = originals[name]

        def wrapper(self, *args, **kwargs):
            seen[name] += 1
            return real(self, *args, **kwargs)
        return wrapper

    for n in HOST_READS:
        setattr(torch.Tensor, n, counting(n))
    try:
        yield seen
    finally:
        for n, real in originals.items():
            setattr(torch.Tensor, n, real)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], Any], dev: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(dev)
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        _sync(dev)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def profiled(fn: Callable[[], Any], dev: torch.device, trace: Path | None = None) -> dict[str, Any]:
    """One profiled call of ``fn`` (after one unprofiled), summarized; its Python-level host reads too."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    fn()
    _sync(dev)
    with counted_host_reads() as reads, profile(activities=acts) as prof:
        t = time.perf_counter()
        fn()
        _sync(dev)
        wall = time.perf_counter() - t
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    out = summarize(list(prof.events()), wall, dev.type == "cuda")
    out["host_reads"] = dict(reads)
    out["phases"] = phase_summary(prof)
    return out


# ------------------------------------------------------------------------------------- step phases


def phase_ranges(step, step_module, generator: bool = True) -> Callable[[], None]:
    """Wrap the step's parts in `record_function` ranges named phase::...; returns the undo function.

    ``generator=False`` leaves a compiled generator's forward alone (no range for G.forward)."""
    rf = torch.profiler.record_function
    undo: list[tuple[Any, str, Any, bool]] = []

    def wrap(obj, attr: str, name: str) -> None:
        fn = getattr(obj, attr)
        undo.append((obj, attr, fn, attr in vars(obj)))

        @functools.wraps(fn)
        def w(*a, **k):
            with rf("phase::" + name):
                return fn(*a, **k)
        setattr(obj, attr, w)

    wrap(step.backbone, "encode_text", "text")
    wrap(step.D, "encode", "D.encode")
    wrap(step_module, "ma_gp", "ma_gp")
    wrap(step.opt_d, "step", "opt_d")
    wrap(step.opt_g, "step", "opt_g")
    if generator:
        wrap(step.G, "forward", "G.forward")
    original = torch.Tensor.backward
    count = {"n": 0}

    def backward(self, *a, **k):
        count["n"] += 1
        with rf("phase::backward." + ("D" if count["n"] % 2 else "G")):
            return original(self, *a, **k)
    torch.Tensor.backward = backward

    def restore() -> None:
        torch.Tensor.backward = original
        for obj, attr, fn, had in reversed(undo):
            if had:
                setattr(obj, attr, fn)
            else:
                delattr(obj, attr)
    return restore


def phase_summary(prof) -> dict[str, dict[str, float]]:
    out = {}
    for e in prof.key_averages():
        if e.key.startswith("phase::"):
            dev = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
            out[e.key[7:]] = {"cpu_ms": round(e.cpu_time_total / 1e3, 2), "gpu_ms": round(dev / 1e3, 2), "calls": e.count}
    return out


# ------------------------------------------------------------------------------------------- main


def build(preset: str, dev: torch.device, precision: str):
    """The preset's networks (random CLIP) and training step, as `ratlip train` builds them."""
    from ratlip_cli.config import resolve_config
    from ratlip_cli.models.family import RunFiles
    from ratlip_cli.models.registry import get_family

    cfg = resolve_config(preset, overrides=["clip.weights=random", f"train.precision={precision}",
                                            f"train.device={dev.type}"])
    fam = get_family(cfg)
    torch.manual_seed(0)
    text = fam.text_encoder(cfg, RunFiles(None, seed=0), dev)
    nets = fam.build(cfg, text).to(dev)
    fam.randomise_generator(nets.generator, 0)
    step = fam.training_step(cfg, nets, dev, torch.Generator().manual_seed(0))
    step.train()
    return cfg, nets, step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("gpu-profile"))
    p.add_argument("--preset", default="cub")
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="amp_bf16", choices=["fp32", "amp_bf16", "amp_fp16"])
    p.add_argument("--batches", default="32,64,128", help="comma-separated batch sizes")
    p.add_argument("--modes", default="eager,compiled", help="eager and/or compiled")
    p.add_argument("--iters", type=int, default=5, help="timed calls per stage (median)")
    p.add_argument("--deadline", type=float, default=270.0, help="start no stage after this many seconds")
    p.add_argument("--trace", action="store_true", help="also write Chrome traces (large)")
    a = p.parse_args(argv)
    t0 = time.time()
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_profile: no CUDA GPU is visible (use --device cpu for the reduced CPU run)")
    from ratlip_cli import bench as B
    from ratlip_cli.console import console
    from ratlip_cli.precision import autocast
    import ratlip_cli.models.ratlip.step as step_module

    a.out.mkdir(parents=True, exist_ok=True)
    cfg, nets, step = build(a.preset, dev, a.precision)
    G = nets.generator
    batches = [int(x) for x in a.batches.split(",") if x]
    modes = [m for m in a.modes.split(",") if m]
    rows: list[dict[str, Any]] = []
    report = {"device": B.device_name(dev), "torch": torch.__version__, "preset": a.preset, "precision": a.precision,
              "rows": rows}

    def log(msg: str) -> None:
        console.print(f"[{time.time() - t0:6.1f}s] {msg}", markup=False, highlight=False, soft_wrap=True)

    def stage(name: str, fn: Callable[[], dict[str, Any]], **meta) -> None:
        if time.time() - t0 > a.deadline:
            rows.append({"stage": name, **meta, "status": "SKIP (deadline)"})
            log(f"{name} {meta}: SKIP (deadline)")
            return
        try:
            r = {"stage": name, **meta, "status": "OK", **fn()}
        except Exception as e:  # noqa: BLE001 (one failed stage must not stop the others)
            traceback.print_exc()
            r = {"stage": name, **meta, "status": "FAIL", "error": f"{type(e).__name__}: {e}"[:400]}
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(r)
        log(f"{name} {meta}: " + brief(r))
        (a.out / "gpu_profile.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")

    dense = {}
    if dev.type == "cuda":
        stage("matmul", lambda: dense.setdefault("r", {"bf16_matmul_tflops": round(B.matmul_gflops(dev, "bf16") / 1e3, 1)}))

    def gen_inputs(n: int):
        g = torch.Generator().manual_seed(1)
        z = torch.randn(n, nets.z_dim, generator=g).to(dev)
        with torch.no_grad():
            s = nets.text.encode(nets.text.tokenizer(B._captions(n, g)).to(dev))
        return z, s

    def step_batch(n: int):
        g = torch.Generator().manual_seed(2)
        size = cfg.data.crop_size
        img = (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)
        return {"image": img.pin_memory() if dev.type == "cuda" else img,
                "tokens": nets.text.tokenizer(["a small bird with a red head"] * n)}

    def run_gen(module, n: int, mode: str) -> dict[str, Any]:
        z, s = gen_inputs(n)
        module.eval()

        def fn():
            with torch.inference_mode(), autocast(dev, a.precision):
                return module(z, s)
        t = time.perf_counter()
        fn()
        _sync(dev)
        first = time.perf_counter() - t
        sec = timed(fn, dev, warmup=1, iters=a.iters)
        prof = profiled(fn, dev, a.out / f"gen_{mode}_{n}.json" if a.trace else None)
        return {"first_call_s": round(first, 2), "ms": round(sec * 1e3, 2), "img_s": round(n / sec, 1), **prof}

    def run_step(n: int, mode: str) -> dict[str, Any]:
        batch = step_batch(n)
        G.train()
        t = time.perf_counter()
        step(batch)  # Adam's state (first batch size), cuDNN plans, the compile
        _sync(dev)
        first = time.perf_counter() - t
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        sec = timed(lambda: step(batch), dev, warmup=1, iters=a.iters)
        r: dict[str, Any] = {"first_call_s": round(first, 2), "ms": round(sec * 1e3, 2), "img_s": round(n / sec, 1)}
        if dev.type == "cuda":
            r["peak_gb"] = round(torch.cuda.max_memory_allocated(dev) / 1e9, 2)
        restore = phase_ranges(step, step_module, generator=mode == "eager")
        try:
            r.update(profiled(lambda: step(batch), dev, a.out / f"step_{mode}_{n}.json" if a.trace else None))
        finally:
            restore()
        return r

    for mode in modes:
        if mode == "compiled":
            torch._dynamo.reset()
            gen_c = torch.compile(G)
        for i, n in enumerate(batches):
            if mode == "eager":
                stage("generator", functools.partial(run_gen, G, n, mode), mode=mode, batch=n)
                stage("step", functools.partial(run_step, n, mode), mode=mode, batch=n)
            else:
                stage("generator", functools.partial(run_gen, gen_c, n, mode), mode=mode, batch=n)
        if mode == "compiled":
            # G compiled inside the step, as train.compile=generator does (D and MA-GP's double
            # backward stay eager: AOTAutograd has no double backward).
            torch._dynamo.reset()
            eager_g = step.run_g
            step.run_g = torch.compile(step.G)
            try:
                for n in batches:
                    stage("step", functools.partial(run_step, n, mode), mode=mode, batch=n)
            finally:
                step.run_g = eager_g
    log(f"wrote {a.out / 'gpu_profile.json'}")
    show(rows, log)
    return 0 if all(r["status"] in ("OK", "SKIP (deadline)") for r in rows) else 1


def brief(r: dict[str, Any]) -> str:
    """One line of a stage's row: speed, kernels, busy fraction, syncs, the three largest categories."""
    if r["status"] != "OK":
        return r["status"] + (": " + r["error"] if "error" in r else "")
    if "img_s" not in r:
        return json.dumps({k: v for k, v in r.items() if k not in ("stage", "status")})
    cats = ", ".join(f"{k} {v:.1f} ms" for k, v in list(r["by_category_ms"].items())[:4])
    return (f"{r['img_s']} img/s ({r['ms']} ms; first call {r['first_call_s']} s), {r['kernels']} kernels, "
            f"busy {r['busy_fraction']}, syncs {r['host_syncs'] or 0}, host reads {r['host_reads'] or 0}; {cats}")


def show(rows: list[dict[str, Any]], log: Callable[[str], None]) -> None:
    """The summary table (Markdown) and each profiled stage's top kernels."""
    log("| stage | mode | batch | img/s | ms | kernels | busy | host syncs | host reads | largest categories (ms) |")
    log("|---|---|---:|---:|---:|---:|---:|---|---|---|")
    for r in rows:
        if r.get("status") != "OK" or "img_s" not in r:
            continue
        cats = ", ".join(f"{k} {v:.1f}" for k, v in list(r["by_category_ms"].items())[:4])
        syncs = sum(r["host_syncs"].values())
        reads = sum(r["host_reads"].values())
        log(f"| {r['stage']} | {r['mode']} | {r['batch']} | {r['img_s']} | {r['ms']} | {r['kernels']} | "
            f"{r['busy_fraction']} | {syncs} | {reads} | {cats} |")
    for r in rows:
        if r.get("status") == "OK" and r.get("top_kernels"):
            log(f"top kernels, {r['stage']} {r['mode']} batch {r['batch']}:")
            for name, count, ms in r["top_kernels"][:8]:
                log(f"    {ms:9.3f} ms  x{count:<5d} {name}")


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
