"""CAE-GAN's text-only gap: images from the learned query prior against images from real image regions.

CAE-GAN's generator reads f_c = CE(words, image regions). At training the regions are the real
image's (the frozen DAMSM image encoder's); at text-only sampling a query prior predicts them from
the sentence (distilled by MSE). This script takes a trained caegan run on `shapes` and, for every
test image and its first caption, draws the same noise twice: once from the prior (what `ratlip
sample` and `ratlip eval` do) and once from that test image's own regions. It prints the shapes
checker's rates (all three = colour, shape and background), FID against the test images (offline Inception, clean-fid mode) for both, and the
distillation fit on the held-out test captions in eval mode (relative error of the prior's f_c).

    python benchmarks/caegan_prior_gap.py --run RUN [--which ema|raw] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from ratlip_cli.data.prepared import load_prepared
from ratlip_cli.data.shapes import score_shapes
from ratlip_cli.export import load_generator
from ratlip_cli.grid import to_uint8
from ratlip_cli.metrics.features import build_feature_extractor
from ratlip_cli.metrics.fid import fid_from_features
from ratlip_cli.models.dmgan.vocab import caption_lengths


def _test_split(root: Path, size: int) -> tuple[torch.Tensor, list[str]]:
    prepared = load_prepared(root)
    rows = prepared.split_images("test")
    captions = prepared.captions_by_key()
    images = []
    for path in rows["path"]:
        img = Image.open(prepared.image_path(path)).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        images.append(np.asarray(img, dtype=np.float32) / 127.5 - 1)
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return tensor, [captions[k][0] for k in rows["key"]]


def _uint8(images: torch.Tensor) -> list[np.ndarray]:
    return list(to_uint8(images).permute(0, 2, 3, 1).numpy())


@torch.no_grad()
def measure(run: Path, which: str, seeds: list[int], batch: int = 64, console: Console | None = None
            ) -> list[dict[str, dict[str, float]]]:
    """Rates, FID and the prior's f_c error, one result per noise seed (the run and the test split loaded once)."""
    loaded = load_generator(run, which=which)
    cfg, wrapper = loaded.cfg, loaded.generator
    inner, encoders = wrapper.generator, loaded.text.encoders
    reals, captions = _test_split(Path(cfg.data.root), cfg.data.crop_size)
    extractor = build_feature_extractor("inception", "clean")
    real_feats = extractor(_uint8(reals))
    results = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        out: dict[str, list] = {"prior": [], "regions": []}
        err_num = err_den = 0.0
        for lo in range(0, len(captions), batch):
            caps, real = captions[lo:lo + batch], reals[lo:lo + batch]
            tokens = encoders.vocab(caps)
            words, sentence = encoders.text(tokens, caption_lengths(tokens))
            mask = tokens[:, : words.shape[2]] == 0
            region, _ = encoders.image(real)
            regions = region.float().flatten(2).transpose(1, 2)
            z = torch.randn(len(caps), inner.z_dim, generator=gen)
            eps = torch.randn(len(caps), inner.c_dim, generator=gen)
            for name, reg in (("prior", None), ("regions", regions)):
                out[name].append(inner(z, sentence, words, mask, eps=eps, image_regions=reg)[0][-1])
            target = inner.condition(sentence, words, mask, regions)
            predicted = inner.condition(sentence, words, mask, None)
            err_num += float((predicted - target).pow(2).sum())
            err_den += float(target.pow(2).sum())
        result: dict[str, dict[str, float]] = {}
        for name, parts in out.items():
            fakes = torch.cat(parts)
            rates = score_shapes(fakes, captions)
            result[name] = {**{k: rates[k] for k in ("colour", "shape", "background", "size", "all")},
                            "fid": fid_from_features(extractor(_uint8(fakes)), real_feats)}
        result["fit"] = {"relative_error": err_num / err_den, "n": len(captions)}
        if console is not None:
            console.print(f"seed {seed}: {result}", highlight=False, soft_wrap=True)
        results.append(result)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a caegan run folder (trained on shapes)")
    ap.add_argument("--which", default="ema", choices=("ema", "raw"), help="which exported generator")
    ap.add_argument("--seeds", default="0,1,2", help="noise seeds (comma-separated)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    console = Console()
    rows = measure(args.run, args.which, seeds, console=console)
    table = Table(title=f"CAE-GAN prior gap: {args.run.name} ({args.which}), {rows[0]['fit']['n']} test images, "
                        f"seeds {args.seeds}")
    for col in ("f_c from", "colour", "shape", "background", "size", "all three", "FID"):
        table.add_column(col, justify="right")
    for name in ("prior", "regions"):
        vals = {k: np.array([r[name][k] for r in rows]) for k in rows[0][name]}
        cell = lambda k, f="{:.3f}": f"{f.format(vals[k].mean())} +- {f.format(vals[k].std())}"  # noqa: E731
        table.add_row("query prior (text only)" if name == "prior" else "real test-image regions",
                      cell("colour"), cell("shape"), cell("background"), cell("size"), cell("all"),
                      cell("fid", "{:.1f}"))
    console.print(table)
    console.print(f"prior's f_c on held-out test captions (eval mode): relative squared error "
                  f"{np.mean([r['fit']['relative_error'] for r in rows]):.4f}")


if __name__ == "__main__":
    main()
