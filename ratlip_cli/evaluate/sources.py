"""Image sources: a generator's batches from captions, or a folder of images with a captions CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ratlip_cli.config import EvalConfig
from ratlip_cli.console import warn
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import atomic_write, write_text
from ratlip_cli.metrics.clip_score import (
    r_precision,
    sample_negatives,
)
from ratlip_cli.grid import to_uint8
from ratlip_cli.seeds import caption_noise
from ratlip_cli.evaluate.options import (
    IMAGE_SUFFIXES,
    ImageBatch,
)
from ratlip_cli.evaluate.reference import (
    ReferenceSplit,
)


# ----------------------------------------------------------------------------- image sources


def to_hwc_arrays(images: torch.Tensor) -> list[np.ndarray]:
    """Generator output (B, 3, H, W) -> uint8 (H, W, 3) arrays (`sample.to_uint8`'s rounding)."""
    return list(to_uint8(images).permute(0, 2, 3, 1).numpy())


def generate_batches(
    loaded, captions: Sequence[str], batch_size: int, seed: int, device: torch.device,
    starts: Sequence[int] | None = None, protocol: str = "clean-fid",
) -> Iterator[ImageBatch]:
    """Images from `loaded` (LoadedGenerator: generator, backbone, tokenizer, cfg) for `captions`
    (only the batches beginning at `starts`, when given). Noise: per image from `(seed, index)`
    (clean-fid), or the release's one `torch.randn(B, z_dim)` per batch after seeding (galip), whose
    batches also keep the float images (`tensors`)."""
    gen, backbone, tokenizer = loaded.generator, loaded.backbone, loaded.tokenizer
    from ratlip_cli.evaluate.protocols import galip_noise
    from ratlip_cli.export import noise_dim

    z_dim = noise_dim(loaded)
    galip = protocol == "galip"
    all_starts = list(range(0, len(captions), batch_size))
    if galip:
        noise = dict(zip(all_starts, galip_noise([len(captions[s : s + batch_size]) for s in all_starts], z_dim, seed)))
    gen.eval()
    for start in all_starts if starts is None else starts:
        caps = list(captions[start : start + batch_size])
        z = (noise[start] if galip else caption_noise(len(caps), z_dim, seed, start)).to(device)
        with torch.no_grad():
            sentence = backbone.encode_text(tokenizer(caps).to(device))[0]
            images = gen(z, sentence)
        yield ImageBatch(to_hwc_arrays(images), caps, start, images.float().cpu() if galip else None)


def embed_batches(batches: Iterable[ImageBatch], scorer, out: tuple[list[torch.Tensor], list[str]]
                  ) -> Iterator[ImageBatch]:
    """Pass batches through, appending ``scorer``'s image embeddings and the captions to ``out``."""
    for batch in batches:
        out[0].append(scorer.embed_images(batch.images))
        out[1].extend(batch.captions)
        yield batch


def scorer_r_precision(scorer, image_emb: torch.Tensor, captions: list[str], split: ReferenceSplit,
                       ecfg: EvalConfig, seed: int) -> dict[str, Any]:
    """R-precision (%) with a family's own encoders (DM-GAN: AttnGAN's DAMSM R-precision): each image's
    code against its caption and ``r_precision_candidates - 1`` wrong captions drawn as for CLIP R-precision."""
    pool, excluded_by_text = split.pool()
    pool_index = {t: i for i, t in enumerate(pool)}
    excluded = [set(excluded_by_text.get(c, ())) | ({pool_index[c]} if c in pool_index else set()) for c in captions]
    negatives = sample_negatives(excluded, len(pool), ecfg.r_precision_candidates - 1, seed)
    rp = r_precision(image_emb, scorer.embed_texts(list(captions)), scorer.embed_texts(pool), negatives)
    key = scorer.name.lower()
    return {f"{key}_r_precision": rp, f"{key}_r_precision_candidates": int(negatives.shape[1]) + 1}


def save_batches(batches: Iterable[ImageBatch], folder: Path) -> Iterator[ImageBatch]:
    """Pass batches through, writing them as PNGs plus `captions.csv` (readable by folder mode)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for batch in batches:
        for img, cap in zip(batch.images, batch.captions):
            name = f"{len(rows):06d}.png"
            atomic_write(folder / name, lambda fh, img=img: Image.fromarray(img).save(fh, format="PNG"), fsync=False)
            rows.append((name, cap))
        yield batch
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file", "caption"])
    writer.writerows(rows)
    write_text(folder / "captions.csv", buf.getvalue())


def read_captions_file(path: str | Path, images_dir: str | Path) -> list[tuple[Path, str]]:
    """Parse a captions CSV (header `file,caption`; `file` relative to `images_dir`) and check it."""
    import pandas as pd

    path, images_dir = Path(path).expanduser(), Path(images_dir).expanduser()
    if not images_dir.is_dir():
        raise RatlipError(f"images folder not found: {images_dir}")
    if not path.is_file():
        raise RatlipError(f"captions file not found: {path} (a CSV with columns file,caption)")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = (str(exc).splitlines() or ["unreadable"])[0]
        raise RatlipError(f"captions file {path} is not a CSV with columns file,caption: {reason}") from None
    missing = [c for c in ("file", "caption") if c not in table.columns]
    if missing:
        found = ",".join(map(str, table.columns)) or "nothing"
        raise RatlipError(f"captions file {path} needs a header line with columns file,caption; found: {found}")
    if table.empty:
        raise RatlipError(f"captions file {path} lists no images")
    entries, seen = [], set()
    for row, (name, caption) in enumerate(zip(table["file"], table["caption"]), start=1):
        if not name.strip():
            raise RatlipError(f"captions file {path}, row {row}: empty file name")
        if not caption.strip():
            raise RatlipError(f"captions file {path}, row {row}: empty caption for {name}")
        if name in seen:
            raise RatlipError(f"captions file {path}, row {row}: {name} is listed twice")
        seen.add(name)
        full = images_dir / name
        if not full.is_file():
            raise RatlipError(f"captions file {path}, row {row}: image not found: {full}")
        entries.append((full, caption))
    extra = sum(1 for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) - len(entries)
    if extra > 0:
        warn(f"{extra} images in {images_dir} are not listed in {path.name} and are not scored")
    return entries


def read_image(path: Path) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3), as clean-fid reads it."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise RatlipError(f"cannot read image {path}: {exc}") from None


def folder_batches(
    entries: Sequence[tuple[Path, str]], batch_size: int, starts: Sequence[int] | None = None
) -> Iterator[ImageBatch]:
    """Batches of (image, caption) read from disk in the captions file's order (only those beginning at
    `starts`, when given)."""
    for start in range(0, len(entries), batch_size) if starts is None else starts:
        chunk = entries[start : start + batch_size]
        yield ImageBatch([read_image(p) for p, _ in chunk], [c for _, c in chunk], start)
