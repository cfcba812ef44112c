"""Speed and outputs of the working tree's generator against the one of another git revision.

The models package of REV (`git show REV:ratlip_cli/models/*.py`) is copied into a temporary
package; both generators get the same weights (REV's state dict, moved off the initialisation) and
run alternately in this one process, so their ratio holds on a busy machine.

    python benchmarks/compare_models.py --rev 6760843 --batch 8 --threads 2 --rounds 3
    python benchmarks/compare_models.py --rev 6760843 --batch 4 --train   # forward + backward, train mode
    python benchmarks/compare_models.py --malloc-ab --batch 8             # working tree: glibc default vs tuned
    python benchmarks/compare_models.py --channels-last-ab --batch 8      # working tree: NCHW vs channels_last

6760843 is the commit that added the models (before the speed work of issue 9).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_revision_models(rev: str, where: Path):
    """Import ratlip_cli/models as of `rev` as the package `ratlip_models_<rev>`."""
    name = f"ratlip_models_{rev.replace('-', '_').replace('~', '_').replace('^', '_')}"
    pkg = where / name
    pkg.mkdir()
    files = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{rev}:ratlip_cli/models"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    for f in files:
        if f.endswith(".py"):
            text = subprocess.run(
                ["git", "show", f"{rev}:ratlip_cli/models/{f}"], cwd=ROOT, check=True, capture_output=True, text=True
            ).stdout
            (pkg / f).write_text(text.replace("ratlip_cli.models", name), encoding="utf-8")
    sys.path.insert(0, str(where))
    return importlib.import_module(name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", default="6760843", help="git revision of the reference models")
    p.add_argument("--preset", default="cub")
    p.add_argument("--set", action="append", default=[], help="config override, e.g. model.rat.hidden=0")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="0: torch's default")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--train", action="store_true", help="time forward + backward in train mode instead of inference")
    p.add_argument("--no-tune-malloc", action="store_true", help="leave glibc malloc at its defaults for both")
    p.add_argument("--malloc-ab", action="store_true",
                   help="instead: the working tree's generator with glibc's default allocator vs the tuned one")
    p.add_argument("--channels-last-ab", action="store_true",
                   help="instead: the working tree's generator with NCHW vs channels_last activations")
    a = p.parse_args()

    from ratlip_cli.models.ratlip import build as current  # the working tree's build_models
    from ratlip_cli.profiling import tune_cpu_allocator
    from ratlip_cli.config import resolve_config
    from ratlip_cli.models.registry import get_family
    from ratlip_cli.weights import load_clip

    if a.threads:
        torch.set_num_threads(a.threads)
    if not a.no_tune_malloc:
        tune_cpu_allocator(True)
    with tempfile.TemporaryDirectory() as tmp:
        reference = load_revision_models(a.rev, Path(tmp))
        cfg = resolve_config(a.preset, overrides=["clip.weights=random", *a.set])
        torch.manual_seed(0)
        clip, _ = load_clip(cfg.clip.arch, "random")
        g_ref = reference.build_models(cfg, clip).generator
        get_family(cfg).randomise_generator(g_ref, seed=1)
        g_new = current.build_models(cfg, clip).generator
        g_new.load_state_dict(g_ref.state_dict())
        for g in (g_ref, g_new):
            g.train(a.train)
        gen = torch.Generator().manual_seed(2)
        z = torch.randn(a.batch, cfg.model.z_dim, generator=gen)
        s = torch.randn(a.batch, g_new.backbone.embed_dim, generator=gen)
        autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if a.precision == "bf16" else contextlib.nullcontext

        def run(g):
            if a.train:
                g.zero_grad(set_to_none=True)
                with autocast():
                    out = g(z, s)
                out.float().square().mean().backward()
                return out.detach()
            with torch.inference_mode(), autocast():
                return g(z, s)

        out_ref, out_new = run(g_ref).float(), run(g_new).float()
        print(f"max |new - {a.rev}| = {(out_ref - out_new).abs().max().item():.3g} (outputs std {out_ref.std().item():.3g})")
        if a.malloc_ab or a.channels_last_ab:
            if a.malloc_ab:
                labels, setting = ("glibc default", "tuned malloc"), lambda on: tune_cpu_allocator(on)
            else:
                labels, setting = ("NCHW", "channels_last"), lambda on: setattr(g_new, "channels_last", on)
            times = {"ref": [], "new": []}
            for _ in range(a.rounds):
                for key, on in (("ref", False), ("new", True)):
                    setting(on)
                    run(g_new)  # one untimed run to settle the heap
                    t0 = time.perf_counter()
                    run(g_new)
                    times[key].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"working tree, {a.precision}, {torch.get_num_threads()} threads, batch {a.batch}: {labels[0]} "
                  f"{a.batch / med['ref']:.3f} img/s, {labels[1]} {a.batch / med['new']:.3f} img/s, "
                  f"speed-up {med['ref'] / med['new']:.2f}x")
            return
        times = {"ref": [], "new": []}
        for _ in range(a.rounds):
            for key, g in (("ref", g_ref), ("new", g_new)):
                t0 = time.perf_counter()
                run(g)
                times[key].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        what = "forward+backward" if a.train else "generator"
        print(
            f"{what} {a.precision} batch {a.batch}, {torch.get_num_threads()} threads: "
            f"{a.rev} {a.batch / med['ref']:.3f} img/s, working tree {a.batch / med['new']:.3f} img/s, "
            f"speed-up {med['ref'] / med['new']:.2f}x  (runs: {a.rev} {[round(t, 2) for t in times['ref']]}, "
            f"new {[round(t, 2) for t in times['new']]})"
        )


if __name__ == "__main__":
    main()
