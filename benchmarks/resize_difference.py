"""How far ratlip's stored images (Lanczos) are from the release's resize (torchvision `Resize(304)`).

The release (OxygenLu/RATLIP code/lib/perpare.py) applies `transforms.Resize(int(imsize * 76 / 64))`
= `Resize(304)` to PIL images: PIL's bilinear filter, which widens its support when it shrinks
(antialiased). `ratlip prepare` stores the shorter side at `data.prepared_size` with Lanczos
(`data/prepared.py: resize_shorter`), the cub preset's 304, and the loader then crops as the release
does. The filter is compared at the release's output size (torchvision truncates the long side,
`resize_shorter` rounds it: the sizes columns show where they differ by a pixel). This script resizes the photos that ship with the installed packages (matplotlib's and
gradio's sample images; no download) both ways and prints the per-pixel difference in 0-255 units,
with JPEG quality 95 (what `prepare` writes) as a yardstick.

    python benchmarks/resize_difference.py [--size 304]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table


def sample_photos() -> list[Path]:
    """RGB photos bundled with matplotlib and gradio whose shorter side exceeds 304 px."""
    import gradio
    import matplotlib

    paths = [Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"]
    assets = Path(gradio.__file__).parent / "media_assets" / "images"
    paths += [assets / n for n in ("cheetah.jpg", "groot.jpeg", "tower.jpg")]
    return [p for p in paths if p.is_file()]


def release_resize(img: Image.Image, size: int) -> Image.Image:
    from torchvision import transforms

    return transforms.Resize(size)(img)


def ratlip_resize(img: Image.Image, size: int) -> Image.Image:
    from ratlip_cli.data.prepared import resize_shorter

    return resize_shorter(img, size, "lanczos")


def lanczos_at(img: Image.Image, shape: tuple[int, int]) -> Image.Image:
    """Lanczos to the release's output size (torchvision truncates the long side, ratlip rounds it)."""
    return img.resize(shape, Image.Resampling.LANCZOS)


def jpeg95(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, subsampling=0)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _stats(a: Image.Image, b: Image.Image) -> tuple[float, float, float]:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"sizes differ: {x.shape} vs {y.shape}")
    d = np.abs(x - y)
    mse = float((d ** 2).mean())
    return float(d.mean()), float(np.percentile(d, 99)), 10 * np.log10(255.0 ** 2 / mse) if mse else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=304, help="shorter side (the release: int(256 * 76 / 64) = 304)")
    size = ap.parse_args().size
    table = Table(title=f"Lanczos (ratlip prepare) vs torchvision Resize({size}) (release), 0-255 units")
    for col in ("image", "source", "release size", "ratlip size", "mean |diff|", "p99 |diff|", "PSNR dB",
                "JPEG q95: mean |diff|", "PSNR dB "):
        table.add_column(col, justify="right")
    rows = []
    for path in sample_photos():
        img = Image.open(path).convert("RGB")
        theirs, ours = release_resize(img, size), ratlip_resize(img, size)
        m, p99, psnr = _stats(lanczos_at(img, theirs.size), theirs)
        jm, _, jpsnr = _stats(theirs, jpeg95(theirs))
        rows.append((m, psnr, jm, jpsnr))
        table.add_row(path.name, f"{img.size[0]}x{img.size[1]}", f"{theirs.size[0]}x{theirs.size[1]}",
                      f"{ours.size[0]}x{ours.size[1]}", f"{m:.2f}", f"{p99:.1f}", f"{psnr:.1f}", f"{jm:.2f}", f"{jpsnr:.1f}")
    if rows:
        mean = np.mean(np.array(rows), axis=0)
        table.add_row("mean", "", "", "", f"{mean[0]:.2f}", "", f"{mean[1]:.1f}", f"{mean[2]:.2f}", f"{mean[3]:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
