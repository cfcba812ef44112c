"""The training step with `train.compile=generator` against eager, alternating in one process (issue 31).

    OMP_NUM_THREADS=1 python benchmarks/compile_step.py --preset tiny --batch 16
    python benchmarks/compile_step.py --preset cub --batch 64 --device cuda --precision amp_bf16

Builds two steps of the preset (random CLIP, same seeds), one eager and one whose generator runs
through `torch.compile` (as `train.compile=generator`), prints the first compiled step's time (the
compile), then the median images/s of each and the median of the per-round time ratios (compiled /
eager) over alternating rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def make(preset: str, setting: str, batch: int, device: torch.device, precision: str):
    """A training step of ``preset`` with train.compile = setting, and a synthetic batch for it."""
    from ratlip_cli.config import resolve_config
    from ratlip_cli.models.family import RunFiles
    from ratlip_cli.models.registry import get_family

    cfg = resolve_config(preset, overrides=["clip.weights=random", f"train.device={device.type}",
                                            f"train.compile={setting}", f"train.precision={precision}"])
    fam = get_family(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        nets = fam.build(cfg, fam.text_encoder(cfg, RunFiles(None, seed=0), device)).to(device)
    step = fam.training_step(cfg, nets, device, torch.Generator().manual_seed(5))
    step.train()
    g = torch.Generator().manual_seed(1)
    size = cfg.data.crop_size
    data = {"image": (torch.rand(batch, 3, size, size, generator=g) * 255).to(torch.uint8),
            "tokens": nets.text.tokenizer(["a small red circle on a blue background"] * batch)}
    return step, data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "amp_bf16", "amp_fp16"])
    p.add_argument("--rounds", type=int, default=9)
    a = p.parse_args(argv)
    from ratlip_cli.console import console
    from ratlip_cli.profiling import tune_cpu_allocator

    device = torch.device(a.device)
    if device.type == "cpu":
        tune_cpu_allocator(True)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    eager, eager_batch = make(a.preset, "none", a.batch, device, a.precision)
    comp, comp_batch = make(a.preset, "generator", a.batch, device, a.precision)
    if not comp.compiled:
        raise SystemExit(f"compile_step: {comp.compile_reason}")

    def call(step, batch) -> float:
        t = time.perf_counter()
        step(batch)
        sync()
        return time.perf_counter() - t

    console.print(f"first compiled step (the compile): {call(comp, comp_batch):.1f} s")
    for _ in range(2):
        call(comp, comp_batch)
        call(eager, eager_batch)
    te: list[float] = []
    tc: list[float] = []
    for r in range(a.rounds):
        pair = ((eager, eager_batch, te), (comp, comp_batch, tc))
        for step, batch, times in (pair if r % 2 == 0 else pair[::-1]):
            times.append(call(step, batch))
    ratios = [c / e for c, e in zip(tc, te)]
    console.print(f"{a.preset} batch {a.batch} {a.precision} on {device.type}, {torch.get_num_threads()} threads: "
                  f"eager {a.batch / statistics.median(te):.1f} img/s, generator compiled "
                  f"{a.batch / statistics.median(tc):.1f} img/s; time ratio compiled / eager: median "
                  f"{statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f} ({a.rounds} rounds)",
                  highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
