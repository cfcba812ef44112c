"""Images out: generator output to uint8, captioned grids (a label strip above each row), PIL images
and atomic image files. Used by `ratlip sample`, the demo, evaluation and the training loop's grids."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from ratlip_cli.console import warn
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import atomic_write

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
LABEL_MAX_LINES = 3
LABEL_BACKGROUND = (255, 255, 255)
LABEL_COLOUR = (20, 20, 20)
# Display grids (`ratlip sample`, the demo, the training loop's grids) show images smaller than this
# many pixels enlarged by a whole factor, nearest neighbour, so a 32 px sample is readable at a glance;
# the pixels themselves are kept exact in `--save-individual` files.
DISPLAY_SIZE = 128


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Unbounded generator output -> clamp to [-1, 1] -> uint8 in [0, 255] on the CPU (non-finite values
    are said and drawn as 0, +1 or -1: NaN -> 0, i.e. grey)."""
    x = images.detach()
    x = x if x.dtype == torch.float64 else x.float()
    if not torch.isfinite(x).all():
        warn(f"generator produced {int((~torch.isfinite(x)).sum())} non-finite pixel values; drawn as grey/white/black")
        x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    x = x.clamp(-1.0, 1.0)
    return ((x + 1.0) * 127.5).round().to(torch.uint8).cpu()


# ------------------------------------------------------------------------------------- the grid


@lru_cache(maxsize=8)
def label_font(size: int) -> ImageFont.ImageFont:
    """PIL's built-in font at `size` pixels (no font file needed)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed-size bitmap font
        return ImageFont.load_default()


def default_font_size(image_size: int) -> int:
    """Label font size for a grid of `image_size` images: readable on 32 px images, not huge on 256."""
    return max(11, min(20, image_size // 6))


def _text_width(font, text: str) -> float:
    return font.getlength(text) if hasattr(font, "getlength") else font.getsize(text)[0]


def wrap_label(text: str, font, max_width: int, max_lines: int = LABEL_MAX_LINES) -> list[str]:
    """Greedy word wrap to `max_width` pixels; over-long words are split; over `max_lines` ends in …"""
    if not text:
        return [""]
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if _text_width(font, candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        while _text_width(font, word) > max_width and len(word) > 1:  # split a word wider than a line
            cut = len(word) - 1
            while cut > 1 and _text_width(font, word[:cut]) > max_width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and _text_width(font, last + "…") > max_width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last.rstrip() + "…"]
    return lines


@dataclass(frozen=True)
class GridLayout:
    """Where everything goes: a label strip above each row of `cols` images of `image_size` pixels."""

    width: int
    height: int
    image_size: int
    cols: int
    font_size: int
    pad: int
    line_height: int
    label_lines: tuple[tuple[str, ...], ...]
    label_heights: tuple[int, ...]
    row_tops: tuple[int, ...] = field(default=())  # y of each row's images

    @property
    def rows(self) -> int:
        return len(self.label_heights)

    def cell_origin(self, row: int, col: int) -> tuple[int, int]:
        """Top-left pixel of image (row, col)."""
        return col * self.image_size, self.row_tops[row]


def grid_layout(
    labels: Optional[Sequence[str]],
    rows: int,
    cols: int,
    image_size: int,
    font_size: Optional[int] = None,
) -> GridLayout:
    """The grid's arithmetic: width = cols * S; height = rows * S + the label strips' heights.

    A label strip is 2 * pad + lines * line_height tall (lines wrapped to the grid width, at most
    LABEL_MAX_LINES); with `labels=None` there are no strips and the grid is exactly rows x cols images.
    """
    if labels is not None and len(labels) != rows:
        raise ValueError(f"{len(labels)} labels for {rows} rows")
    size = font_size or default_font_size(image_size)
    font = label_font(size)
    ascent, descent = font.getmetrics()
    line_height = ascent + descent
    pad = max(2, size // 3)
    width = cols * image_size
    lines, heights, tops = [], [], []
    y = 0
    for r in range(rows):
        if labels is None:
            row_lines: tuple[str, ...] = ()
            h = 0
        else:
            row_lines = tuple(wrap_label(labels[r], font, max(1, width - 2 * pad)))
            h = 2 * pad + len(row_lines) * line_height
        lines.append(row_lines)
        heights.append(h)
        tops.append(y + h)
        y += h + image_size
    return GridLayout(
        width=width,
        height=y,
        image_size=image_size,
        cols=cols,
        font_size=size,
        pad=pad,
        line_height=line_height,
        label_lines=tuple(lines),
        label_heights=tuple(heights),
        row_tops=tuple(tops),
    )


def display_scale(image_size: int, display_size: int) -> int:
    """The whole factor that enlarges `image_size` px images to at least `display_size` px (1: as they are)."""
    if display_size < 0:
        raise RatlipError(f"the display size must be >= 0 pixels (0 keeps the images' own size), got {display_size}")
    return max(1, -(-display_size // image_size)) if display_size else 1


def render_grid(
    images: torch.Tensor,
    labels: Optional[Sequence[str]] = None,
    font_size: Optional[int] = None,
    display_size: int = 0,
) -> Image.Image:
    """A captioned grid from uint8 images (rows, cols, 3, S, S): each row's label in a strip above it.

    With `display_size`, images smaller than that are enlarged by `display_scale` (nearest neighbour:
    every pixel becomes a k x k block of the same value) and the labels sized for the enlarged cells.
    """
    if images.dim() != 5 or images.shape[2] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images (rows, cols, 3, S, S), got {tuple(images.shape)} {images.dtype}")
    rows, cols, _, size, size_w = images.shape
    if size != size_w:
        raise ValueError(f"expected square images, got {size}x{size_w}")
    scale = display_scale(size, display_size)
    layout = grid_layout(labels, rows, cols, size * scale, font_size)
    canvas = Image.new("RGB", (layout.width, layout.height), LABEL_BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = label_font(layout.font_size)
    for r in range(rows):
        y = layout.row_tops[r] - layout.label_heights[r] + layout.pad
        for line in layout.label_lines[r]:
            draw.text((layout.pad, y), line, fill=LABEL_COLOUR, font=font)
            y += layout.line_height
        for c in range(cols):
            cell = to_pil(images[r, c])
            if scale > 1:
                cell = cell.resize((size * scale, size * scale), Image.Resampling.NEAREST)
            canvas.paste(cell, layout.cell_origin(r, c))
    return canvas


def to_pil(image: torch.Tensor) -> Image.Image:
    """One uint8 image (3, S, S) as a PIL RGB image."""
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy(), mode="RGB")


def image_format(path: str | Path) -> str:
    """PIL format name from the file extension: PNG, JPEG or WebP."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise RatlipError(
            f"cannot tell the image format of {path}: use a .png, .jpg, .jpeg or .webp file name"
        )
    return IMAGE_FORMATS[suffix]


def save_image(image: Image.Image, path: str | Path) -> Path:
    """Write an image in the format its extension names, atomically (`ratlip_cli.files`)."""
    path = Path(path)
    fmt = image_format(path)
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {"optimize": True}
    return atomic_write(path, lambda fh: image.save(fh, format=fmt, **options))
