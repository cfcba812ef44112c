"""How large ECAGAN's perceptual loss is next to the adversarial terms, to choose its weight lambda1.

Renders shapes images (the `shapes` dataset's generator, seed 0) at the stage sizes of the preset
that runs (shapes: 8 / 16 / 32 px, ngf 16) and prints L_per on the config's perceptual network for
(a) a freshly initialised ECAGAN generator of that preset against real images and (b) real images
against other real images of different captions, and the lambda1 at which the term starts at the
size of one adversarial BCE term (log 2 = 0.69) per stage.

    python benchmarks/perceptual_magnitude.py --batch 8 [--preset shapes] [--layer mixed_6]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from rich.console import Console

from ratlip_cli.config import resolve_config
from ratlip_cli.data.shapes import render_spec, shape_items
from ratlip_cli.models.dmgan.networks import init_weights
from ratlip_cli.models.dmgan.sizes import stage_sizes
from ratlip_cli.models.ecagan.build import ecagan_generator
from ratlip_cli.models.ecagan.perceptual_network import build_perceptual_loss


def _images(items, idx, size: int) -> torch.Tensor:
    arrays = [np.asarray(render_spec(items[i].spec, size)) for i in idx]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="images per comparison")
    parser.add_argument("--preset", default="shapes", help="preset whose ECAGAN runs (its stage sizes and widths)")
    parser.add_argument("--layer", default="", help="Inception layer the loss reads (default: the config's)")
    args = parser.parse_args()
    cfg = resolve_config(args.preset, overrides=["model.family=ecagan"])
    if args.layer:
        cfg.ecagan.perceptual_layer = args.layer
    torch.manual_seed(0)
    items = [i for i in shape_items() if i.split == "train"]
    pick = np.random.default_rng(0).choice(len(items), 2 * args.batch, replace=False)
    loss = build_perceptual_loss(cfg.ecagan)
    dm, nef = cfg.dmgan, cfg.damsm.embedding_dim
    sizes = stage_sizes(cfg.data.crop_size, dm.branch_num)
    gen = ecagan_generator(cfg, nef, sizes[0])
    gen.apply(init_weights)
    gen.reset_after_init()
    gen.eval()
    b = args.batch
    console = Console()
    console.print(f"{args.preset}: stages {sizes} px, ngf {dm.gf_dim}, {loss.label}, min size {loss.min_size}")
    fresh = []
    with torch.no_grad():
        fakes, _, _, _ = gen(torch.randn(b, dm.z_dim), torch.randn(b, nef), torch.randn(b, nef, 6), None)
        for size, fake in zip(sizes, fakes):
            real, other = _images(items, pick[:b], size), _images(items, pick[b:], size)
            fresh.append(loss(fake, real).item())
            console.print(f"{size:3d} px: L_per(fresh generator, real) {fresh[-1]:.3f}   "
                          f"L_per(real, other real) {loss(other, real).item():.3f}")
    console.print(f"lambda1 that makes the term start at one adversarial BCE term (log 2) per stage: "
                  f"{np.log(2) / np.mean(fresh):.3f}")


if __name__ == "__main__":
    main()
