"""Calibrate the Grad-CAM object share on real shapes images: what a perfect generator would score.

For the test split's real images (at the generator's size) with their own captions, the Grad-CAM
map of the evaluation CLIP (`eval.gradcam_target: clip`) at each ViT block's input, the share of its
mass inside the shapes checker's object, and the object's area (the control). A measure that can
separate generators needs share clearly above area here. With --shuffle each image is paired with
the caption of the image half the split away (another colour: the map then explains a caption the
image does not show).

    OMP_NUM_THREADS=1 python benchmarks/gradcam_calibration.py --set data.root=data/shapes [--shuffle]
"""

from __future__ import annotations

import argparse


def main() -> None:
    from ratlip_cli.config import resolve_config
    from ratlip_cli.console import console
    from ratlip_cli.evaluate.reference import load_reference_image, load_test_split
    from ratlip_cli.gradcam import clip_explainer, shapes_object_share

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shapes")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--num", type=int, default=0, help="first N test images (0: all)")
    parser.add_argument("--shuffle", action="store_true", help="pair every image with another image's caption")
    args = parser.parse_args()
    cfg = resolve_config(args.preset, overrides=args.sets)
    from ratlip_cli.train.loop import ensure_dataset

    ensure_dataset(cfg)
    split = load_test_split(cfg.data.root, "test", cfg.data.shard_url)
    idx = [i for i, caps in enumerate(split.captions) if caps][: args.num or None]
    images = [load_reference_image(split.paths[i], cfg.model.image_size) for i in idx]
    captions = [split.captions[i][i % len(split.captions[i])] for i in idx]
    if args.shuffle:  # half the split away: the test split is sorted by colour, so another colour
        half = len(captions) // 2
        captions = captions[half:] + captions[:half]
    for block in (-1, -2, -3, -4):
        cfg.eval.gradcam_block = block
        explainer = clip_explainer(cfg, "cpu")
        res = shapes_object_share(images, explainer.explain(images, captions))
        console.print(
            f"block {block}: Grad-CAM share in object {res['share']:.3f}, object area {res['area']:.3f}, "
            f"images {res['n']} (left out {res['skipped']}); {explainer.identity}",
            highlight=False, soft_wrap=True,
        )


if __name__ == "__main__":
    main()
