"""`ratlip bench`: generator and training-step speed, memory, FLOPs, roofline ratio and bf16 quality.

Every setting (RAT hidden size x precision x batch size) runs in ONE process, one after another.
Each row records how busy the machine was: ``other_cpus``, the CPUs other processes kept busy during
the timed runs (Linux /proc/stat minus this process; on a 2-core machine one busy neighbour makes a
2-thread run several times slower), and ``load_avg``, the 1-minute load average at the row's end
(this process included). Speed does not depend on weight values, so CLIP weights are random by
default (`clip.weights=random`, overridable with --set).

Rows (see `COLUMNS`):
- ``phase=generate``: the generator alone, eval mode, `torch.inference_mode`, warm-up runs excluded,
  median over `repeats` timed runs; ``max_abs_diff``/``psnr_db`` compare its images with fp32 images
  of the same seeds (pixels in [0, 1], i.e. [-1, 1] clamped and mapped).
- ``phase=train``: one full training step of `ratlip train` (the model family's training-step
  object, built as `train` builds it; for RATLIP: text encoding, D step with MA-GP, G step; no data
  loading, no EMA update) on a synthetic batch.
- FLOPs: `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention; elementwise
  ops are not counted), per image, counted on an extra fp32 run of the same setting (same operations;
  the counter's decompositions do not run under autocast); ``achieved_gflops`` = FLOPs per image x
  images/s; ``roofline`` = achieved / ``matmul_gflops``, this machine's dense matmul rate in the same
  precision (2048 x 2048 on CPU, 8192 on CUDA; median of 3) measured right after the setting, so
  that a load change during a long run moves both.
- Memory, from one more (untimed) run after the timed ones: CUDA: ``peak_mem_mb`` =
  `torch.cuda.max_memory_allocated` during that run, ``mem_delta_mb`` = that minus the memory
  allocated before it. CPU: ``peak_mem_mb`` = the peak resident set size of the process during that
  run (sampled every 2 ms from /proc; includes weights and everything else alive), ``mem_delta_mb``
  = that peak minus the RSS just before it (after `malloc_trim`): what the setting itself needs.
  (`ru_maxrss` is monotonic over the process, so it cannot attribute memory to one setting; the
  sampling thread is kept out of the timed runs, where it cost about 5% at batch 1.)

CPU allocator: PyTorch allocates CPU tensors with malloc; glibc serves large blocks (above its mmap
threshold, at most 32 MB) with a fresh mmap and unmaps them when freed, so every large activation is
page-faulted (and zeroed by the kernel) anew on every forward. `tune_cpu_allocator` (on by default,
``--no-tune-malloc`` to compare) makes glibc keep freed memory in its heap instead.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ratlip_cli.clip_pretrain import ensure_in_domain_clip
from ratlip_cli.config import resolve_config, set_value, validate
from ratlip_cli.console import console, warn
from ratlip_cli.dist import resolve_device
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import write_csv as write_csv_file
from ratlip_cli.models.family import RunFiles
from ratlip_cli.models.registry import get_family
from ratlip_cli.profiling import malloc_trim, tune_cpu_allocator

COLUMNS = [
    "preset",
    "device",
    "threads",
    "compile",
    "tuned_malloc",
    "hidden",
    "precision",
    "phase",
    "batch",
    "images_per_s",
    "ms_per_batch",
    "runs",
    "gflop_per_image",
    "achieved_gflops",
    "matmul_gflops",
    "roofline",
    "peak_mem_mb",
    "mem_delta_mb",
    "max_abs_diff",
    "psnr_db",
    "other_cpus",
    "load_avg",
]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TRAIN_PRECISION = {"fp32": "fp32", "bf16": "amp_bf16", "fp16": "amp_fp16"}
CAPTION = "a small bird with a red head, white belly and short pointed beak"
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "brown", "grey")


def _captions(n: int, gen: torch.Generator) -> list[str]:
    """``n`` captions of varied colours (the generator's text condition), drawn from ``gen``."""
    idx = torch.randint(len(COLOURS), (n, 2), generator=gen).tolist()
    return [f"a small bird with a {COLOURS[i]} head and a {COLOURS[j]} belly" for i, j in idx]


@dataclass
class BenchOptions:
    """What `ratlip bench` measures; see the module docstring."""

    preset: str = "cub"
    hiddens: list[int] | None = None  # None: 0 and the preset's model.rat.hidden
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    precisions: list[str] = field(default_factory=lambda: ["fp32", "bf16"])
    device: str | None = None
    compile: bool = False
    csv: Path | None = None
    repeats: int = 3
    warmup: int = 1
    sets: list[str] = field(default_factory=list)
    train_batch_size: int = 4
    skip_train: bool = False
    tune_malloc: bool = True
    threads: int | None = None  # torch.set_num_threads for CPU work; None: torch's default
    seed: int = 0
    show: bool = True


# ---------------------------------------------------------------------------------------------
# machine helpers (the allocator ones live in profiling.py: `ratlip train` applies them too)


def _rss_bytes() -> int:
    """Current resident set size (Linux /proc), else the process's peak RSS (monotonic)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class MemoryMeter:
    """Peak memory of a code block: CUDA max allocated, or CPU RSS sampled by a thread every 2 ms."""

    def __init__(self, device: torch.device, interval: float = 0.002) -> None:
        self.device, self.interval = device, interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemoryMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = self.peak = torch.cuda.memory_allocated(self.device)
        else:
            malloc_trim()
            self.start = self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, _rss_bytes())

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes of the machine have been busy (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class OtherCpuMeter:
    """How many CPUs other processes kept busy during a block: machine busy time minus ours, per second."""

    def __enter__(self) -> OtherCpuMeter:
        self.cpus: float | None = None
        self._busy, self._own, self._wall = _busy_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        busy, wall = _busy_cpu_seconds(), time.perf_counter() - self._wall
        if busy is not None and self._busy is not None and wall > 0:
            self.cpus = max(0.0, ((busy - self._busy) - (_own_cpu_seconds() - self._own)) / wall)


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `fn` for `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def matmul_gflops(device: torch.device, precision: str, size: int | None = None, repeats: int = 3) -> float:
    """This machine's dense matmul rate (GFLOP/s, median) for size x size matrices in `precision`."""
    dtype = PRECISIONS[precision] or torch.float32
    size = size or (2048 if device.type == "cpu" else 8192)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)
    with torch.inference_mode():
        times = time_runs(lambda: a @ b, device, warmup=1, repeats=repeats)
    return 2 * size**3 / statistics.median(times) / 1e9


class _GlobalOnly:
    """Stands in for FlopCounterMode's ModuleTracker: count globally, install no module hooks.

    The tracker's backward hooks break `torch.autograd.grad` (MA-GP's double backward).
    """

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc) -> None:
        return None


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` (matmuls, convolutions, attention), by `FlopCounterMode`."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return int(counter.get_total_flops())


def psnr_and_max_diff(images: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max |difference|, PSNR in dB) of two image batches in [-1, 1], compared as [0, 1] pixels."""
    a = (images.float().clamp(-1, 1) + 1) / 2
    b = (reference.float().clamp(-1, 1) + 1) / 2
    diff = (a - b).abs()
    mse = diff.square().mean().item()
    return diff.max().item(), (math.inf if mse == 0 else 10 * math.log10(1.0 / mse))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or 'CPU'} ({os.cpu_count()} cores)"


def _load_avg() -> float | str:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return ""


def _autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# the benchmark


def _check(options: BenchOptions) -> None:
    bad = [p for p in options.precisions if p not in PRECISIONS]
    if bad or not options.precisions:
        got = ", ".join(options.precisions) or "nothing"
        raise RatlipError(f"--precision takes a list of {', '.join(PRECISIONS)}; got {got}")
    if not options.batch_sizes or min(options.batch_sizes) < 1:
        raise RatlipError("--batch-sizes must be positive integers, e.g. --batch-sizes 1,8")
    if options.hiddens is not None and (not options.hiddens or min(options.hiddens) < 0):
        raise RatlipError("--hidden must be integers >= 0, e.g. --hidden 0,64")
    if options.repeats < 1 or options.warmup < 0:
        raise RatlipError("--repeats must be >= 1 and --warmup >= 0")
    if options.threads is not None and options.threads < 1:
        raise RatlipError("--threads must be at least 1")
    if options.train_batch_size < 2:
        raise RatlipError("--train-batch-size must be at least 2 (mismatched captions need two samples)")


def run_bench(options: BenchOptions) -> list[dict[str, Any]]:
    """Run every setting of `options` in this process; returns the rows (dicts keyed by `COLUMNS`).

    The thread count, the allocator setting and the global RNG are restored afterwards.
    """
    _check(options)
    threads_before = torch.get_num_threads()
    tuned = False
    try:
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        device = _device(options)
        if device.type == "cpu":
            tuned = tune_cpu_allocator(True) if options.tune_malloc else False
        with torch.random.fork_rng(devices=[]):
            return _run(options, device, tuned)
    finally:
        torch.set_num_threads(threads_before)
        if tuned:
            tune_cpu_allocator(False)


def _device(options: BenchOptions) -> torch.device:
    device = resolve_device(options.device or "auto")
    if device.type == "cpu" and "fp16" in options.precisions:
        warn("fp16 on CPU is emulated and slow; bf16 is the CPU half precision")
    return device


def _run(options: BenchOptions, device: torch.device, tuned: bool) -> list[dict[str, Any]]:
    base = resolve_config(options.preset, overrides=["clip.weights=random", *options.sets])
    if not get_family(base).has_rat:
        raise RatlipError(f"ratlip bench sweeps the RAT hidden size; model.family={base.model.family} has no RAT "
                          "(its training speed is metrics.csv's images_per_s)")
    hiddens = options.hiddens if options.hiddens is not None else sorted({0, base.model.rat.hidden})
    for hidden in hiddens:  # e.g. GALIP has no RAT: --hidden 0,64 is refused before anything is timed
        probe = copy.deepcopy(base)
        set_value(probe, "model.rat.hidden", hidden)
        try:
            validate(probe)
        except RatlipError as exc:
            raise RatlipError(f"--hidden {hidden}: {exc}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        files = RunFiles(None, seed=options.seed, in_domain_clip=ensure_in_domain_clip)
        text = get_family(base).text_encoder(base, files, device)
    matmul = {p: matmul_gflops(device, p) for p in options.precisions}
    name = device_name(device)
    common = {
        "preset": options.preset,
        "device": name,
        "threads": torch.get_num_threads(),
        "compile": options.compile,
        "tuned_malloc": tuned,
    }
    if options.show:
        rates = ", ".join(f"{p} {v:.0f} GFLOP/s" for p, v in matmul.items())
        console.print(
            f"bench {options.preset} on {name}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"dense matmul: {rates}; load average {_load_avg()}",
            highlight=False,
            soft_wrap=True,
        )

    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        row = {**common, **row, "load_avg": _load_avg()}
        rows.append({c: row.get(c, "") for c in COLUMNS})
        if options.show:
            r = rows[-1]
            console.print(
                f"  h={r['hidden']} {r['precision']} {r['phase']} batch {r['batch']}: {r['images_per_s']} img/s, "
                f"{r['gflop_per_image']} GFLOP/img, {r['roofline']} of matmul, peak {r['peak_mem_mb']} MB",
                highlight=False,
                soft_wrap=True,
            )

    for hidden in hiddens:
        _bench_hidden(hidden, options, device, text, emit)
        malloc_trim()

    if options.show:
        show_table(rows)
    if options.csv:
        write_csv(rows, options.csv)
        if options.show:
            console.print(f"wrote {options.csv}", highlight=False)
    return rows


def _bench_hidden(hidden: int, options: BenchOptions, device: torch.device, text, emit) -> None:
    """Every generator setting, then every training step, of one RAT hidden size (a fresh model)."""
    cfg = resolve_config(options.preset, overrides=["clip.weights=random", *options.sets])
    set_value(cfg, "model.rat.hidden", hidden)
    family = get_family(cfg)
    torch.manual_seed(options.seed)
    nets = family.build(cfg, text).to(device)
    G = nets.generator
    family.randomise_generator(G, options.seed)
    G.eval()
    runner = torch.compile(G) if options.compile else G
    reference: dict[int, torch.Tensor] = {}  # fp32 images per batch size, for the bf16/fp16 rows

    def generate(module, z, s, precision: str) -> torch.Tensor:
        with torch.inference_mode(), _autocast(device, precision):
            return module(z, s)

    for precision in options.precisions:
        for batch in options.batch_sizes:
            gen = torch.Generator().manual_seed(options.seed * 1000 + batch)  # same inputs for every precision
            z = torch.randn(batch, nets.z_dim, generator=gen).to(device)
            s = nets.text.encode(nets.text.tokenizer(_captions(batch, gen)).to(device))
            with OtherCpuMeter() as others:
                times = time_runs(lambda: generate(runner, z, s, precision), device, options.warmup, options.repeats)
            # Memory from one more, untimed run: the sampling thread would cost ~5% at batch 1.
            with MemoryMeter(device) as mem:
                out = generate(runner, z, s, precision).float()
            rate = matmul_gflops(device, precision)  # right after the setting: the machine's load drifts
            flops = count_flops(lambda: generate(G, z, s, "fp32")) / batch
            ips = batch / statistics.median(times)
            row = _speed_row(hidden, precision, "generate", batch, times, ips, flops, rate, mem, others)
            if precision == "fp32":
                reference[batch] = out
            else:
                if batch not in reference:
                    reference[batch] = generate(G, z, s, "fp32").float()
                diff, psnr = psnr_and_max_diff(out, reference[batch])
                row.update(max_abs_diff=f"{diff:.4g}", psnr_db=round(psnr, 2) if math.isfinite(psnr) else "inf")
            emit(row)

    if not options.skip_train:
        for precision in options.precisions:
            emit(_train_row(cfg, family, nets, device, hidden, precision, options))


def _speed_row(
    hidden, precision, phase, batch, times, ips, flops, matmul_rate, mem: MemoryMeter, others: OtherCpuMeter
) -> dict[str, Any]:
    achieved = flops * ips / 1e9
    return {
        "hidden": hidden,
        "precision": precision,
        "phase": phase,
        "batch": batch,
        "images_per_s": round(ips, 3),
        "ms_per_batch": round(1000 * statistics.median(times), 1),
        "runs": len(times),
        "gflop_per_image": round(flops / 1e9, 3),
        "achieved_gflops": round(achieved, 1),
        "matmul_gflops": round(matmul_rate, 1),
        "roofline": round(achieved / matmul_rate, 3),
        "peak_mem_mb": round(mem.peak_mb, 1),
        "mem_delta_mb": round(mem.delta_mb, 1),
        "other_cpus": "" if others.cpus is None else round(others.cpus, 2),
    }


def _train_row(cfg, family, nets, device, hidden, precision, options: BenchOptions) -> dict[str, Any]:
    """Time the family's training step (as `train` builds it) on a synthetic batch (random images at data.crop_size)."""
    cfg.train.precision = TRAIN_PRECISION[precision]
    cfg.train.global_batch = 0  # one step at the bench's batch; a paper preset's release batch would accumulate 8
    train_step = family.training_step(cfg, nets, device, torch.Generator().manual_seed(options.seed))
    b = options.train_batch_size * getattr(train_step, "accumulate", 1)  # micro-batches of train_batch_size
    gen = torch.Generator().manual_seed(options.seed + 1)
    size = cfg.data.crop_size
    batch = {
        "image": (torch.rand(b, 3, size, size, generator=gen) * 2 - 1),
        "tokens": nets.text.tokenizer([CAPTION] * b),
    }
    train_step.train()
    step = lambda: train_step(batch)  # noqa: E731
    step()  # the first step also allocates Adam's state: not timed, not in the memory delta
    with OtherCpuMeter() as others:
        times = time_runs(step, device, max(0, options.warmup - 1), options.repeats)
    with MemoryMeter(device) as mem:
        step()
    matmul_rate = matmul_gflops(device, precision)
    # FLOPs are counted in fp32: the same operations, and FlopCounterMode's decompositions (e.g. of
    # the LSTM cell) do not run under autocast.
    train_step.set_precision("fp32")
    flops = count_flops(step) / b
    train_step.set_precision(TRAIN_PRECISION[precision])
    ips = b / statistics.median(times)
    return _speed_row(hidden, precision, "train", b, times, ips, flops, matmul_rate, mem, others)


# ---------------------------------------------------------------------------------------------
# output


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write the rows with every column of `COLUMNS`, atomically."""
    write_csv_file(path, COLUMNS, ([row.get(c, "") for c in COLUMNS] for row in rows))


TABLE_COLUMNS = [
    ("hidden", "h"),
    ("precision", "precision"),
    ("phase", "phase"),
    ("batch", "batch"),
    ("images_per_s", "img/s"),
    ("ms_per_batch", "ms/batch"),
    ("gflop_per_image", "GFLOP/img"),
    ("achieved_gflops", "GFLOP/s"),
    ("roofline", "of matmul"),
    ("peak_mem_mb", "peak MB"),
    ("mem_delta_mb", "delta MB"),
    ("max_abs_diff", "max |diff|"),
    ("psnr_db", "PSNR dB"),
    ("other_cpus", "others"),
    ("load_avg", "load"),
]


def build_table(rows: list[dict[str, Any]]):
    """A Rich table of the rows (the CSV has every column, this the informative ones)."""
    from rich.table import Table

    first = rows[0] if rows else {}
    title = (
        f"ratlip bench {first.get('preset', '')}: {first.get('device', '')}, {first.get('threads', '')} threads"
        + (", torch.compile" if first.get("compile") else "")
    )
    table = Table(
        title=title,
        caption="peak/delta MB: CUDA max allocated, or CPU peak RSS (delta: above the RSS before the setting); "
        "others: CPUs busy with other processes meanwhile; load: 1-min load average (this process included)",
    )
    for key, header in TABLE_COLUMNS:
        table.add_column(header, justify="left" if key in ("precision", "phase") else "right")
    for row in rows:
        table.add_row(*[_fmt(row.get(key, "")) for key, _ in TABLE_COLUMNS])
    return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def show_table(rows: list[dict[str, Any]]) -> None:
    # Not a terminal (a log file, CI): print at full width rather than squeezing 14 columns into 80.
    from rich.console import Console

    out = console if console.is_terminal else Console(file=console.file, width=160)
    out.print(build_table(rows))
