"""How large ECAGAN's perceptual loss is next to the adversarial terms, to choose its weight lambda1.

Renders shapes images (the `shapes` dataset's generator, seed 0) at the three stage sizes of the
shapes preset (16, 32, 64) and prints L_per on the offline Inception (conv_4, min size 64) for
(a) a freshly initialised ECAGAN generator's images against real ones and (b) real images against
other real images of different captions. The adversarial BCE terms start near log 2 = 0.69 each.

    python benchmarks/perceptual_magnitude.py --batch 8
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ratlip_cli.data.shapes import render_spec, shape_items
from ratlip_cli.metrics.inception import load_inception_layers
from ratlip_cli.models.common.perceptual import TF_INCEPTION_MEAN, TF_INCEPTION_STD, PerceptualLoss, truncate_after
from ratlip_cli.models.dmgan.networks import init_weights
from ratlip_cli.models.ecagan.networks import CarafeSettings, EcaganGenerator


def _images(items, idx, size: int) -> torch.Tensor:
    arrays = [np.asarray(render_spec(items[i].spec, size)) for i in idx]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="images per comparison")
    parser.add_argument("--layer", default="conv_4", help="Inception layer the loss reads")
    args = parser.parse_args()
    torch.manual_seed(0)
    items = [i for i in shape_items() if i.split == "train"]
    pick = np.random.default_rng(0).choice(len(items), 2 * args.batch, replace=False)
    loss = PerceptualLoss(truncate_after(load_inception_layers(), args.layer), TF_INCEPTION_MEAN, TF_INCEPTION_STD,
                          min_size=64)
    gen = EcaganGenerator(ngf=32, nef=64, ncf=100, z_dim=100, base_size=16, r_num=2, carafe=CarafeSettings())
    gen.apply(init_weights)
    gen.reset_after_init()
    gen.eval()
    b = args.batch
    with torch.no_grad():
        fakes, _, _, _ = gen(torch.randn(b, 100), torch.randn(b, 64), torch.randn(b, 64, 6), None)
        for size, fake in zip((16, 32, 64), fakes):
            real, other = _images(items, pick[:b], size), _images(items, pick[b:], size)
            print(f"{size:3d} px: L_per(fresh generator, real) {loss(fake, real).item():.3f}   "
                  f"L_per(real, other real) {loss(other, real).item():.3f}")


if __name__ == "__main__":
    main()
