"""Does the in-domain CLIP still see the captions' attributes in the discriminator's view of an image?

    python benchmarks/clip_view.py WEIGHTS.safetensors [--data data/shapes] [--arch ratlip-shapes]

The `shapes` preset trains the GAN at 32 px while `ratlip-shapes` takes 64 px: the CLIP-feature
discriminator and the CLIP loss see 32 px images resized back up (bicubic, antialiased: what
`ClipBackbone.to_clip_input` does). This prints the retrieval report of `ratlip pretrain-clip`
(top-1 image->text, text->image, attribute rates on the test split) for the native 64 px test images
and for the same images through the 32 px -> 64 px path. Not a test.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from ratlip_cli.clip_pretrain import _Split, retrieval_report
from ratlip_cli.data.prepared import load_prepared
from ratlip_cli.weights import clip_image_size, load_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", help="in-domain CLIP weights (safetensors)")
    parser.add_argument("--data", default="data/shapes", help="prepared dataset with a test split")
    parser.add_argument("--arch", default="ratlip-shapes")
    parser.add_argument("--low", type=int, default=32, help="the GAN's image size")
    parser.add_argument("--name", default="shapes", help="data.name (attribute rates for shapes)")
    args = parser.parse_args()

    model, tokenizer = load_clip(args.arch, args.weights, None, random_notice=False)
    size = clip_image_size(model)
    prepared = load_prepared(args.data)
    native = _Split(prepared, "test", size)
    low = _Split(prepared, "test", args.low)  # what the training loader hands the GAN
    x = torch.from_numpy(low.images).permute(0, 3, 1, 2).float()
    up = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    low.images = up.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for label, split in ((f"native {size} px", native), (f"{args.low} px -> {size} px (the discriminator's view)", low)):
        report = retrieval_report(model, tokenizer, split, args.name)
        print(json.dumps({"view": label, **{k: round(v, 3) for k, v in report.items()}}))


if __name__ == "__main__":
    main()
