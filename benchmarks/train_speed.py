"""CPU training speed before and after issue 19.3, in one process, settings alternating round by round.

    OMP_NUM_THREADS=1 python benchmarks/train_speed.py                 # the shapes preset, 5 rounds x 20 steps
    python benchmarks/train_speed.py --preset tiny --rounds 3 --steps 10 --threads 2

"before": torch's default Adam on CPU (the per-parameter loop) and glibc's default malloc settings;
"after": what `ratlip train` now does on CPU: fused Adam (`ratlip_cli.optim.adam`) and the tuned
allocator (`ratlip_cli.profiling.tune_cpu_allocator`). Both use the same threads (`--threads`, the
`train.threads` setting). The run is built like `ratlip train` builds it (Trainer.setup), the batches
are fetched once beforehand (data loading excluded), and each round times `--steps` training steps of
each setting (Trainer.train_step: text encoding, D step with MA-GP, G step, optimiser steps),
alternating which goes first. Reported: median images/s over the rounds per setting.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="shapes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override (repeatable)")
    args = parser.parse_args(argv)

    from ratlip_cli.config import resolve_config
    from ratlip_cli.optim import adam
    from ratlip_cli.profiling import tune_cpu_allocator
    from ratlip_cli.train.loop import Trainer

    with tempfile.TemporaryDirectory(prefix="ratlip-train-speed-") as tmp:
        cfg = resolve_config(args.preset, overrides=[
            f"train.runs_dir={tmp}", "train.name=speed", "train.device=cpu", f"train.threads={args.threads}",
            "train.sample_every=0", "train.eval_every=0", "train.checkpoint_every=0", "train.log_every=0",
            "data.num_workers=0", *args.sets])
        trainer = Trainer(cfg)
        trainer.setup()
        batches = []
        for batch in trainer._loader():
            batches.append(batch)
            if len(batches) == args.steps:
                break
        step = trainer.step_fn
        betas = (float(cfg.train.betas[0]), float(cfg.train.betas[1]))
        settings = {
            "before": ((torch.optim.Adam(step.g_params, lr=cfg.train.lr_g, betas=betas, foreach=False),
                        torch.optim.Adam(step.d_params, lr=cfg.train.lr_d, betas=betas, foreach=False)), False),
            "after": ((adam(step.g_params, cfg.train.lr_g, betas), adam(step.d_params, cfg.train.lr_d, betas)), True),
        }
        step.train()
        rates: dict[str, list[float]] = {name: [] for name in settings}
        order = list(settings)
        for r in range(args.rounds + 1):  # round 0 warms up both settings and is not counted
            for name in order if r % 2 == 0 else order[::-1]:
                (opt_g, opt_d), tuned = settings[name]
                step.opt_g, step.opt_d = opt_g, opt_d
                tune_cpu_allocator(tuned)
                start = time.perf_counter()
                images = 0
                for batch in batches:
                    step(batch)
                    images += batch["image"].shape[0]
                if r > 0:
                    rates[name].append(images / (time.perf_counter() - start))
        tune_cpu_allocator(True)
    before, after = statistics.median(rates["before"]), statistics.median(rates["after"])
    sys.stdout.write(
        f"{args.preset}: batch {cfg.train.batch_size}, {torch.get_num_threads()} threads, {args.rounds} rounds x "
        f"{args.steps} steps\n"
        f"before (loop Adam, default malloc): {before:.1f} images/s (rounds: {', '.join(f'{x:.1f}' for x in rates['before'])})\n"
        f"after  (fused Adam, tuned malloc):  {after:.1f} images/s (rounds: {', '.join(f'{x:.1f}' for x in rates['after'])})\n"
        f"speed-up: {after / before:.2f}x\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
