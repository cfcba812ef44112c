"""Can the data loader feed a GPU? Images/s of `ratlip train`'s loader alone at the paper's CUB setting.

    python benchmarks/loader_bench.py                       # 512 images, workers 0,1,2, batch 64
    python benchmarks/loader_bench.py --workers 0,1,2,4,8 --images 2048

The dataset: synthetic photo-like RGB images of 500 x 375 (CUB's typical raw size), written as JPEG,
then through `ratlip`'s own prepare code (`write_prepared`, JPEG q95 4:4:4, shorter side 304 px), so
the files are what `ratlip prepare cub` stores. The loader is `ratlip train`'s: `TextImageDataset`
(train mode: decode, shorter side to data.load_size 304, random 256 crop, flip, to a tensor, one
caption tokenised by the ViT-B/32 CLIP tokenizer) under a `torch.utils.data.DataLoader` with the
default collate, batch 64, no model. `--handover uint8` (the default, what `ratlip train` does)
hands uint8 pixels over, which the training step turns into floats on its device; `float32` is the
hand-over before that change; `--handover float32,uint8` times both. `--formats decoded` times the
loader on the dataset's decoded copy (`ratlip prepare ... --decoded`): crops from one memory-mapped
file, no JPEG decode. Reported:

- per stage, in this process (median over the images): decode, resize, crop + flip + to-tensor,
  tokenize, and collate per image of a batch of 64;
- the DataLoader's images/s with 0 (in-process), 1, 2, ... worker processes, and per worker.

The consumption it is compared with is an ASSUMPTION, not a measurement (no GPU was available):
a training step costs 202 GFLOP per image (`ratlip bench cub`, train step, docs/benchmarks.md), and
an H100 SXM's dense bf16 rate is 989 TFLOP/s (NVIDIA's datasheet); at the 50% of that rate that
issue 19 targets for the generator, one GPU consumes 989e12 * 0.5 / 202e9 = 2,448 images/s.
`--gpu-images-per-s` replaces that figure (e.g. with `ratlip bench cub --device cuda`'s train-step row).

`--formats folder,shards` also writes the same images as tar shards (`write_shards`, the bytes of
`--format shards`) and times `ratlip train`'s shard loader on them (`ShardStream`: whole batches
built in the workers, shuffle buffer `--shuffle-buffer`, 4 streams), next to the folder loader.
Worker memory: the largest proportional set size (PSS, /proc/PID/smaps_rollup) of any loader worker
process, sampled after every batch (PSS splits pages shared with the parent fairly, so it is what
each worker adds).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TRAIN_GFLOP_PER_IMAGE = 202.0  # docs/benchmarks.md, `ratlip bench cub`, train step
H100_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H100 SXM datasheet, dense (no sparsity)
ASSUMED_FRACTION = 0.5  # issue 19's target fraction of the dense bf16 rate
ASSUMED_GPU_IMAGES_PER_S = H100_BF16_DENSE_TFLOPS * 1e12 * ASSUMED_FRACTION / (TRAIN_GFLOP_PER_IMAGE * 1e9)
WORKERS_PER_GPU_8GPU_NODE = 14  # e.g. DGX H100: 2 x 56 cores for 8 GPUs
HEADROOM = 3.0  # the loader should sustain 3x what the GPU consumes


def photo_like(rng: np.random.Generator, width: int = 500, height: int = 375) -> np.ndarray:
    """A smooth random colour field with fine noise: JPEG size and decode cost near a photo's, not a flat image's."""
    from PIL import Image

    low = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    noisy = smooth + rng.normal(0, 12, smooth.shape).astype(np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def make_dataset(folder: Path, n: int) -> Path:
    """n synthetic images prepared like `ratlip prepare cub` does (JPEG, 304 px shorter side); all in train."""
    from PIL import Image

    from ratlip_cli.data.prepared import write_prepared
    from ratlip_cli.data.raw import RawItem, ScanNotes, ScanResult

    raw = folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        path = raw / f"bird{i:05d}.jpg"
        if not path.exists():
            Image.fromarray(photo_like(rng)).save(path, quality=90)
        captions = [f"a small bird number {i} with a red head and white belly", f"bird {i} perched on a branch"]
        items.append(RawItem(key=f"bird{i:05d}", split="train", captions=captions, src=path))
    out = folder / "prepared"
    write_prepared(out, "folder", raw, ScanResult(items, ScanNotes()), size=304, image_format="jpg", workers=1)
    return out


def make_shards(folder: Path, shard_mb: float) -> Path:
    """The images of `make_dataset` as tar shards (same decoder and JPEG bytes), all in train."""
    from ratlip_cli.data.raw import RawItem, ScanNotes, ScanResult
    from ratlip_cli.data.shards import write_shards

    raw = folder / "raw"
    items = [RawItem(key=p.stem, split="train", captions=[f"a small bird number {int(p.stem[4:])} with a red head "
                                                          "and white belly", f"bird {int(p.stem[4:])} perched on a branch"],
                     src=p) for p in sorted(raw.glob("bird*.jpg"))]
    out = folder / "shards"
    write_shards(out, "folder", raw, ScanResult(items, ScanNotes()), size=304, image_format="jpg", workers=1,
                 shard_mb=shard_mb)
    return out


def _pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def stage_times(dataset, tokenizer, n: int) -> dict[str, float]:
    """Median seconds per image of each stage, in this process."""
    from torch.utils.data import default_collate

    from ratlip_cli.data.dataset import load_rgb, resize_shorter_side, to_tensor

    times: dict[str, list[float]] = {"decode": [], "resize": [], "crop+flip+tensor": [], "tokenize": []}
    rng = np.random.default_rng(0)
    for i in range(min(n, len(dataset))):
        t0 = time.perf_counter()
        img = load_rgb(dataset.paths[i])
        t1 = time.perf_counter()
        img = resize_shorter_side(img, dataset.load_size)
        t2 = time.perf_counter()
        w, h = img.size
        left, top = int(rng.integers(w - dataset.crop_size + 1)), int(rng.integers(h - dataset.crop_size + 1))
        crop = img.crop((left, top, left + dataset.crop_size, top + dataset.crop_size)).transpose(0)
        to_tensor(crop, dataset.uint8)
        t3 = time.perf_counter()
        tokenizer([dataset.captions[i][0]])
        t4 = time.perf_counter()
        for key, a, b in (("decode", t0, t1), ("resize", t1, t2), ("crop+flip+tensor", t2, t3), ("tokenize", t3, t4)):
            times[key].append(b - a)
    batch = [dataset[i] for i in range(64)]
    reps = []
    for _ in range(5):
        t0 = time.perf_counter()
        default_collate(batch)
        reps.append((time.perf_counter() - t0) / 64)
    out = {k: statistics.median(v) for k, v in times.items()}
    out["collate (per image, batch 64)"] = statistics.median(reps)
    return out


def loader_rate(dataset, workers: int, batch: int, epochs: int) -> tuple[float, float]:
    """(images/s, largest worker PSS in MB) of the DataLoader over `epochs` passes, the first batch
    (worker start-up) excluded. A ShardStream batches itself; a map-style dataset is batched here."""
    streaming = isinstance(dataset, torch.utils.data.IterableDataset)
    if streaming:
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
    else:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                             drop_last=True, persistent_workers=workers > 0)
    images, start, pss = 0, None, 0.0
    for epoch in range(epochs):
        if streaming:
            dataset.set_position(epoch, 0)
        else:
            dataset.set_epoch(epoch)
        it = iter(loader)
        for batch_data in it:
            if workers:
                pss = max([pss] + [_pss_mb(w.pid) for w in getattr(it, "_workers", [])])
            if start is None:
                start = time.perf_counter()
                continue
            images += batch_data["image"].shape[0]
    return images / (time.perf_counter() - start), pss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512, help="synthetic images in the dataset")
    parser.add_argument("--workers", default="0,1,2", help="DataLoader worker counts to time")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="passes over the dataset per worker count")
    parser.add_argument("--gpu-images-per-s", type=float, default=ASSUMED_GPU_IMAGES_PER_S,
                        help="what one GPU training step consumes (default: the assumption in the docstring)")
    parser.add_argument("--data", type=Path, help="keep the synthetic dataset here (default: a temp folder)")
    parser.add_argument("--formats", default="folder",
                        help="any of folder, decoded (the folder plus its decoded copy), shards, comma-separated")
    parser.add_argument("--shuffle-buffer", type=int, default=1000, help="shards: data.shuffle_buffer")
    parser.add_argument("--shard-mb", type=float, default=1000, help="shards: target shard size in MB")
    parser.add_argument("--handover", default="uint8",
                        help="what workers hand over: uint8 (what `ratlip train` does), float32 (before), or both")
    args = parser.parse_args(argv)

    from ratlip_cli.config import DataConfig
    from ratlip_cli.data.dataset import TextImageDataset

    import open_clip

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ratlip-loader-bench-") as tmp:
        folder = args.data or Path(tmp)
        prepared = make_dataset(folder, args.images)
        files = list((prepared / "images").glob("*.jpg"))
        kb = statistics.mean(p.stat().st_size for p in files) / 1024
        tokenizer = open_clip.get_tokenizer("ViT-B-32-quickgelu")
        cfg = DataConfig(name="cub", root=str(prepared), prepared_size=304, load_size=304, crop_size=256, flip=True)
        handovers = [h.strip() for h in args.handover.split(",") if h.strip()]
        if not handovers or set(handovers) - {"uint8", "float32"}:
            parser.error(f"--handover takes uint8 and/or float32, got {args.handover!r}")
        sys.stdout.write(f"{args.images} images, {kb:.0f} KiB JPEG each on average; CPU: {os.cpu_count()} cores "
                         f"({_cpu_name()})\n")
        loaders = {}
        for handover in handovers:
            dataset = TextImageDataset(prepared, "train", cfg, tokenizer, train=True, seed=0, uint8=handover == "uint8")
            sys.stdout.write(f"\nper stage, one process, {handover} hand-over (ms per image, median):\n")
            stages = stage_times(dataset, tokenizer, min(args.images, 256))
            for name, seconds in stages.items():
                sys.stdout.write(f"  {name:32s} {seconds * 1e3:7.3f}\n")
            total = sum(stages.values())
            sys.stdout.write(f"  {'sum':32s} {total * 1e3:7.3f}  -> {1 / total:.0f} images/s for one core\n")
            if "folder" in args.formats.split(","):
                loaders[f"folder {handover}"] = dataset
        if "decoded" in args.formats.split(","):
            from ratlip_cli.data.decoded import PIXELS_FILE, write_decoded

            t0 = time.perf_counter()
            write_decoded(prepared)
            mb = (prepared / PIXELS_FILE).stat().st_size / 2**20
            sys.stdout.write(f"\ndecoded copy (`ratlip prepare ... --decoded`): {mb:.0f} MB, written in "
                             f"{time.perf_counter() - t0:.1f} s\n")
            for handover in handovers:
                loaders[f"decoded {handover}"] = TextImageDataset(prepared, "train", cfg, tokenizer, train=True, seed=0,
                                                                  uint8=handover == "uint8", decoded=True)
        sys.stdout.write("\n")
        for fmt in args.formats.split(","):
            if fmt in ("folder", "decoded"):
                continue
            elif fmt == "shards":
                from ratlip_cli.data.shards import load_shards
                from ratlip_cli.data.stream import ShardStream

                scfg = DataConfig(name="cub", root=str(folder / "shards"), prepared_size=304, load_size=304,
                                  crop_size=256, flip=True, shuffle_buffer=args.shuffle_buffer, streams=4)
                for handover in handovers:
                    loaders[f"shards {handover}"] = ShardStream(
                        load_shards(make_shards(folder, args.shard_mb)), "train", scfg, tokenizer, args.batch, seed=0,
                        uint8=handover == "uint8")
            else:
                parser.error(f"unknown format {fmt!r}: use folder, decoded and/or shards")
        sys.stdout.write("| format | workers | images/s | per worker | worker PSS MB |\n|---|---:|---:|---:|---:|\n")
        per_worker = []
        for w in [int(x) for x in args.workers.split(",")]:
            for fmt, ds in loaders.items():
                if fmt.startswith("shards") and w > 0 and 4 % w:
                    continue  # workers must divide the 4 streams
                rate, pss = loader_rate(ds, w, args.batch, args.epochs)
                per = rate / max(w, 1)
                if w > 0 and not fmt.startswith("shards"):
                    per_worker.append(per)
                sys.stdout.write(f"| {fmt} | {w} | {rate:.0f} | {per:.0f} | {pss:.0f} |\n" if w else
                                 f"| {fmt} | {w} | {rate:.0f} | {per:.0f} | - |\n")
                sys.stdout.flush()
    need = HEADROOM * args.gpu_images_per_s
    best = max(per_worker) if per_worker else 1 / total
    if best <= 0:
        sys.stdout.write("\nno loader delivered a timed batch (use more --images or --epochs than one batch)\n")
        return 1
    sys.stdout.write(
        f"\nassumed GPU consumption: {args.gpu_images_per_s:.0f} images/s; {HEADROOM:g}x that = {need:.0f} images/s "
        f"= {math.ceil(need / best)} workers at {best:.0f} images/s each "
        f"(a typical 8-GPU node has about {WORKERS_PER_GPU_8GPU_NODE} cores per GPU)\n")
    return 0


def _cpu_name() -> str:
    from ratlip_cli.info import environment

    return environment()["cpu"]


if __name__ == "__main__":
    raise SystemExit(main())
