"""Sampling images/s of trained runs' exported generators (any family), for the families table.

    OMP_NUM_THREADS=1 python benchmarks/sampling_speed.py runs/A runs/B ... [--images 256 --batch 64]

For each run: load its export (the run's eval.generator), encode `--images` test-split captions,
then time generating them in batches (float32, eval mode, no_grad; text encoding and the first
batch, a warm-up, excluded). Prints one Markdown row per run: family, images/s, ms per image.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sampling_rate(run: Path, images: int, batch: int) -> tuple[str, float]:
    """(family, images/s) of the run's exported generator on this machine's CPU."""
    from ratlip_cli.export import load_weights, noise_dim
    from ratlip_cli.seeds import caption_noise

    loaded = load_weights(run, torch.device("cpu"))
    gen = loaded.generator.eval().float()
    captions = [f"a big red circle on a blue background {i % 7}" for i in range(images + batch)]
    with torch.no_grad():
        sentences = loaded.embed(captions).float()
        z = caption_noise(len(captions), noise_dim(loaded), 0)
        gen(z[:batch], sentences[:batch])  # warm-up
        t0 = time.perf_counter()
        for start in range(batch, batch + images, batch):
            gen(z[start : start + batch], sentences[start : start + batch])
        seconds = time.perf_counter() - t0
    return loaded.cfg.model.family, images / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    print(f"| run | family | sampling images/s | ms/image |  ({torch.get_num_threads()} threads)")
    print("|---|---|---:|---:|")
    for run in args.runs:
        family, rate = sampling_rate(run, args.images, args.batch)
        print(f"| {run.name} | {family} | {rate:.1f} | {1000 / rate:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
