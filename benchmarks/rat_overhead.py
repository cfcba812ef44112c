"""RAT overhead: the generator with h = H against h = 0 (GALIP), runs alternating in one process.

`ratlip bench` times settings one after another; on a shared machine a few percent of drift
between two rows is common, which is the size of the effect measured here. Alternating the two
generators run by run (and taking medians) cancels most of that drift.

    python benchmarks/rat_overhead.py --hidden 64 --batch 8 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cub")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    a = p.parse_args()

    from ratlip_cli.profiling import tune_cpu_allocator
    from ratlip_cli.config import resolve_config
    from ratlip_cli.models.ratlip.build import build_models
    from ratlip_cli.weights import load_clip

    if a.threads:
        torch.set_num_threads(a.threads)
    tune_cpu_allocator(True)
    torch.manual_seed(0)
    base = resolve_config(a.preset, overrides=["clip.weights=random"])
    clip, _ = load_clip(base.clip.arch, "random")
    gens = {}
    for h in (0, a.hidden):
        cfg = resolve_config(a.preset, overrides=["clip.weights=random", f"model.rat.hidden={h}"])
        torch.manual_seed(0)
        gens[h] = build_models(cfg, clip).generator.eval()
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(a.batch, base.model.z_dim, generator=gen)
    s = torch.randn(a.batch, gens[0].backbone.embed_dim, generator=gen)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if a.precision == "bf16" else contextlib.nullcontext
    times: dict[int, list[float]] = {h: [] for h in gens}
    with torch.inference_mode(), autocast():
        for g in gens.values():
            g(z, s)
        for _ in range(a.rounds):
            for h, g in gens.items():
                t0 = time.perf_counter()
                g(z, s)
                times[h].append(time.perf_counter() - t0)
    t0, th = statistics.median(times[0]), statistics.median(times[a.hidden])
    print(
        f"{a.preset} {a.precision} batch {a.batch}, {torch.get_num_threads()} threads: h=0 {a.batch / t0:.3f} img/s, "
        f"h={a.hidden} {a.batch / th:.3f} img/s; RAT overhead {100 * (th - t0) / t0:+.1f}% of generator time "
        f"(runs h=0 {[round(t, 3) for t in times[0]]}, h={a.hidden} {[round(t, 3) for t in times[a.hidden]]})"
    )


if __name__ == "__main__":
    main()
