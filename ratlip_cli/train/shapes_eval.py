"""Does a generator follow the text? The shapes checker over held-out (test-split) captions.

Used by in-training evaluation (`train.eval_every` on the shapes dataset) and by
`benchmarks/shapes_learning.py`. Every caption gets its own fixed noise (seeded by its position),
so scores of two generators are comparable image for image.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ratlip_cli import dist
from ratlip_cli.seeds import caption_noise


def shapes_eval_captions(prepared, split: str = "test", num: int = 0, novel_only: bool = False) -> list[str]:
    """One caption per image of ``split`` (phrasing rotating with the image index), optionally capped at ``num``.

    ``novel_only`` keeps the (colour, shape, background) combinations never seen in train.
    """
    from ratlip_cli.data.shapes import held_out_combos, parse_shapes_caption
    from ratlip_cli.data.split import read_split

    part = read_split(prepared, split)
    held = set(held_out_combos())
    out = []
    for i, caps in enumerate(c for c in part.captions if c):
        cap = caps[i % len(caps)]
        if novel_only:
            p = parse_shapes_caption(cap)
            if (p["colour"], p["shape"], p["background"]) not in held:
                continue
        out.append(cap)
    if num > 0 and len(out) > num:
        step = len(out) / num
        out = [out[int(j * step)] for j in range(num)]
    return out


@torch.no_grad()
def score_generator_on_shapes(
    generator: torch.nn.Module,
    embed: Callable[[list[str]], Any],
    captions: Sequence[str],
    z_dim: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    batch_size: int = 64,
    distributed: bool = True,
) -> dict[str, Any]:
    """Match rates (colour, shape, background, size, all) of the generator's images for ``captions``.

    ``embed(captions)`` is the generator's text condition (a family's `TextEncoder`, or
    `LoadedGenerator.embed`).

    With a process group (and ``distributed``), each rank scores every world_size-th caption and the
    counts are summed across ranks; every rank returns the same result.
    """
    from ratlip_cli.data.shapes import CHANCE, check_shapes

    keys = ("colour", "shape", "background", "size", "all")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    mine = list(range(rank, len(captions), world))
    totals = torch.zeros(len(keys) + 1, dtype=torch.float64)
    was_training = generator.training
    generator.eval()
    try:
        for start in range(0, len(mine), batch_size):
            idx = mine[start : start + batch_size]
            caps = [captions[i] for i in idx]
            z = torch.stack([caption_noise(1, z_dim, seed, i)[0] for i in idx]).to(device)
            images = generator(z, embed(caps)).float().clamp(-1, 1).cpu()
            for image, cap in zip(images, caps):
                res = check_shapes(image, cap)
                for k, key in enumerate(keys):
                    totals[k] += float(bool(res[key]))
                totals[-1] += 1
    finally:
        generator.train(was_training)
    if distributed:
        totals = dist.all_reduce_sum(totals.to(device if torch.device(device).type == "cuda" else "cpu")).cpu()
    n = int(totals[-1].item())
    rates = {key: (float(totals[k].item()) / n if n else 0.0) for k, key in enumerate(keys)}
    return {**rates, "n": n, "chance": dict(CHANCE)}
