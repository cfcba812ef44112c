"""The one prepared-dataset format: the resumable writer and `load_prepared`.

Layout of a prepared dataset ROOT (see docs/data.md):
    manifest.json   format version, layout, source, size, counts per split, skipped counts (written last)
    images.csv      key, split, path (relative to ROOT)
    captions.csv    key, caption_idx, text
    images/<key>.jpg|png
    report.txt      every skipped or converted file, with counts
    .prepare-journal.jsonl   the writer's progress (what makes a re-run resume)
"""

from __future__ import annotations

import io
import json
import shutil
import time
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator

from ratlip_cli.data.raw import RawItem, ScanNotes, ScanResult
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import atomic_write, csv_text, remove_stale_temps, write_text, utc_timestamp
from ratlip_cli.progress import progress_bar

FORMAT = "ratlip-prepared"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IMAGES_CSV = "images.csv"
CAPTIONS_CSV = "captions.csv"
REPORT = "report.txt"
JOURNAL = ".prepare-journal.jsonl"
IMAGE_DIR = "images"
JPEG_QUALITY = 95
RESIZE_RULE = "shorter side resized to `size` with Lanczos, aspect ratio kept, no crop"


# --------------------------------------------------------------------------- image processing


def to_rgb(im) -> tuple[Any, str]:
    """Convert any PIL image to RGB; alpha is composited over white. Returns (image, original mode)."""
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im.copy(), mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        top = arr.max() if arr.size else 0
        scale = 255.0 / (65535.0 if top > 255 else 255.0)
        gray = np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB"), mode
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), mode
    return im.convert("RGB"), mode


def resize_shorter(img, size: int, resample: str = "lanczos"):
    """Resize so the shorter side is `size`, keeping the aspect ratio; unchanged when it already is.

    `resample`: lanczos (prepare: the stored images) or bicubic (the loader's resize to data.load_size)."""
    from PIL import Image

    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    new = (size, max(size, round(h * scale))) if w <= h else (max(size, round(w * scale)), size)
    return img.resize(new, Image.Resampling.LANCZOS if resample == "lanczos" else Image.Resampling.BICUBIC)


def _decode(src: str, bbox, size: int, member: tuple[int, int] | None = None) -> tuple[Any, dict[str, Any]]:
    from PIL import Image

    from ratlip_cli.data.cub import bbox_crop_box
    from ratlip_cli.data.raw import open_source

    info: dict[str, Any] = {}
    with open_source(src, member) as fh, Image.open(fh) as im:
        im.load()  # truncated or corrupt data raises here
        img, mode = to_rgb(im)
    if mode != "RGB":
        info["mode"] = mode
    if bbox is not None:
        box = bbox_crop_box(bbox, *img.size)
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            raise ValueError(f"bounding box {tuple(bbox)} lies outside the {img.size[0]}x{img.size[1]} image")
        img = img.crop(box)
    if min(img.size) < size:
        info["upscaled"] = True
    return resize_shorter(img, size), info


def _save_atomic(img, dst: Path, image_format: str) -> None:
    """Write an image atomically (`ratlip_cli.files`): a file under its final name is always complete."""
    atomic_write(dst, lambda fh: img.save(fh, **_save_options(image_format)), fsync=False)


def _save_options(image_format: str) -> dict[str, Any]:
    """PIL save arguments of the stored images: JPEG quality 95 with 4:4:4 chroma, or PNG."""
    if image_format == "jpg":
        return {"format": "JPEG", "quality": JPEG_QUALITY, "subsampling": 0}
    return {"format": "PNG"}


def encode_image(img, image_format: str) -> bytes:
    """The bytes `_save_atomic` would write (for tar shards)."""
    buf = io.BytesIO()
    img.save(buf, **_save_options(image_format))
    return buf.getvalue()


def load_item(key: str, src: str | None, spec, bbox, size: int, member=None) -> tuple[Any, dict[str, Any]]:
    """Decode (or render), convert, crop and resize one image: (image or None, record); never raises on bad input.

    The record is ``{key, ok: True, [mode], [upscaled], [warnings]}`` or ``{key, ok: False, error}``.
    """
    record: dict[str, Any] = {"key": key, "ok": True}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if spec is not None:
                from ratlip_cli.data.shapes import render_spec

                img, info = render_spec(spec, size), {}
            else:
                img, info = _decode(src, bbox, size, member)
    except Exception as exc:  # any decoder failure means: skip this file and report it
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return None, {"key": key, "ok": False, "error": f"{type(exc).__name__}: {reason}"}
    record.update(info)
    messages = sorted({" ".join(str(w.message).split()) for w in caught})
    if messages:
        record["warnings"] = messages
    return img, record


def _process_item(task: tuple) -> dict[str, Any]:
    """Decode (or render), convert, crop and resize one image and write it; never raises on bad input."""
    key, src, spec, bbox, dst, size, image_format, member = task
    img, record = load_item(key, src, spec, bbox, size, member)
    if img is not None:
        _save_atomic(img, Path(dst), image_format)
    return record


# --------------------------------------------------------------------------- the writer


@dataclass
class PrepareSummary:
    """What `write_prepared` did; `counts` is per split: {"images": n, "captions": m}."""

    root: Path
    layout: str
    counts: dict[str, dict[str, int]]
    processed: int
    reused: int
    skipped: dict[str, int]
    converted: dict[str, int]
    warnings: dict[str, int]
    seconds: float
    notes: list[str] = field(default_factory=list)


def _params(layout: str, source: str | None, size: int, image_format: str, extra: dict | None) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "layout": layout,
        "source": source,
        "size": size,
        "image_format": image_format,
        "extra": extra or {},
    }


def _read_journal(path: Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    header, done = None, {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None, {}
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short by an interruption
        if not isinstance(rec, dict):
            continue
        if "header" in rec:
            header = rec["header"]
        elif rec.get("ok") and "key" in rec:
            done[rec["key"]] = rec
    return header, done


def _clear(out: Path) -> None:
    """Remove what a previous `prepare` wrote (and nothing else) from `out`."""
    from ratlip_cli.data.raw import SPLITS

    # The manifest first, the journal (which marks the folder as ours) last: a crash in between
    # never leaves a manifest describing deleted images, nor a folder a re-run would not recognise.
    for name in (MANIFEST, IMAGES_CSV, CAPTIONS_CSV, REPORT):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / IMAGE_DIR, ignore_errors=True)
    for split in SPLITS:  # tar shards (shards.py)
        folder = out / split
        for path in [*folder.glob("*.tar"), *folder.glob("*.tar.tmp")]:
            path.unlink(missing_ok=True)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    (out / JOURNAL).unlink(missing_ok=True)


def _check_out(out: Path, params: dict[str, Any], overwrite: bool) -> dict[str, dict[str, Any]]:
    """Make sure `out` is new, or ours with the same parameters; returns finished journal records."""
    if out.exists() and not out.is_dir():
        raise RatlipError(f"--out {out} is a file; choose a folder")
    ours = (out / JOURNAL).is_file() or (out / MANIFEST).is_file()
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise RatlipError(f"--out {out} is not empty and holds no prepared dataset; choose a new or empty folder")
    if not ours:
        return {}
    header, done = _read_journal(out / JOURNAL)
    if header is None and (out / MANIFEST).is_file():
        try:
            old = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
            header = old.get("params") if isinstance(old.get("params"), dict) else _params(
                old.get("layout"), old.get("source"), old.get("size"), old.get("image_format"), old.get("extra"))
        except (OSError, ValueError):
            header = None
    if header is not None and header != params:
        if not overwrite:
            diff = sorted(k for k in set(params) | set(header) if header.get(k) != params.get(k))
            raise RatlipError(
                f"{out} holds a dataset prepared with other settings ({', '.join(diff)}); "
                "pass --overwrite to replace it or choose another --out"
            )
        _clear(out)
        return {}
    if overwrite:
        _clear(out)
        return {}
    return done if header is not None else {}


def _run(tasks: list[tuple], workers: int, fn: Callable[[tuple], Any] = _process_item) -> Iterator[Any]:
    """`fn` over `tasks` in order, in `workers` spawned processes (in this one for few tasks)."""
    if workers <= 1 or len(tasks) < 64:
        for task in tasks:
            yield fn(task)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        try:
            yield from pool.map(fn, tasks, chunksize=16)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _report_text(
    layout: str,
    source: str | None,
    notes: ScanNotes,
    failed: list[tuple[str, str]],
    records: dict[str, dict[str, Any]],
) -> str:
    lines = [f"ratlip prepare report: layout {layout}, source {source or '(generated)'}", ""]

    def section(title: str, entries: list[str]) -> None:
        lines.append(f"{title}: {len(entries)}")
        lines.extend(f"  {e}" for e in entries)
        lines.append("")

    section("unreadable or corrupt images (skipped)", [f"{k}: {why}" for k, why in failed])
    for name, title in ScanNotes.SECTIONS:
        section(title, getattr(notes, name))
    converted = [f"{k} (from {r['mode']})" for k, r in sorted(records.items()) if r.get("mode")]
    section("images converted to RGB", converted)
    upscaled = [k for k, r in sorted(records.items()) if r.get("upscaled")]
    section("images smaller than the target size (upscaled)", upscaled)
    decode = [f"{k}: {m}" for k, r in sorted(records.items()) for m in r.get("warnings", [])]
    section("decoder warnings", decode)
    if notes.info:
        section("notes", notes.info)
    return "\n".join(lines)


def write_prepared(
    out: str | Path,
    layout: str,
    source: str | Path | None,
    scan: ScanResult,
    size: int,
    *,
    image_format: str = "jpg",
    workers: int = 1,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
) -> PrepareSummary:
    """Write `scan`'s items as a prepared dataset under `out`, resuming any interrupted run.

    Each image is written atomically (`ratlip_cli.files`); finished images (final file present
    and recorded in the journal) are not redone. The index, the report and, last, the manifest are
    written atomically once every image is done.
    """
    start = time.perf_counter()
    out = Path(out)
    if size < 8:
        raise RatlipError(f"--size must be at least 8, got {size}")
    source_str = str(Path(source).resolve()) if source is not None else None
    params = _params(layout, source_str, size, image_format, extra)
    done = _check_out(out, params, overwrite)
    journal_path = out / JOURNAL
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not journal_path.is_file():  # the header first: it marks the folder as ours
            write_text(journal_path, json.dumps({"header": params}) + "\n")
        (out / IMAGE_DIR).mkdir(exist_ok=True)
    except OSError as exc:
        raise RatlipError(f"cannot create the prepared dataset folder {out}: {exc.strerror}") from None

    items: dict[str, RawItem] = {}
    for item in scan.items:
        items.setdefault(item.key, item)
    records: dict[str, dict[str, Any]] = {}
    failed: list[tuple[str, str]] = []
    tasks = []
    for key in sorted(items):
        item = items[key]
        dst = out / IMAGE_DIR / f"{key}.{image_format}"
        if key in done and dst.is_file():
            records[key] = done[key]
            continue
        src = str(item.src) if item.src is not None else None
        tasks.append((key, src, item.spec, item.bbox, str(dst), size, image_format, item.member))

    try:
        with open(journal_path, "a+", encoding="utf-8") as journal, progress_bar() as progress:
            if journal.tell() > 0:
                journal.seek(journal.tell() - 1)
                if journal.read(1) != "\n":  # a line cut short by an interruption
                    journal.write("\n")
            bar = progress.add_task(f"preparing {layout}", total=len(items), completed=len(records))
            for rec in _run(tasks, workers):
                if rec["ok"]:
                    records[rec["key"]] = rec
                    journal.write(json.dumps(rec, sort_keys=True) + "\n")
                    journal.flush()
                else:
                    failed.append((rec["key"], rec["error"]))
                progress.advance(bar)
    except OSError as exc:
        raise RatlipError(f"cannot write the prepared dataset to {out}: {exc}") from None

    remove_stale_temps(out / IMAGE_DIR, recursive=True)
    failed.sort()
    keys = sorted(records)
    image_rows = [[k, items[k].split, f"{IMAGE_DIR}/{k}.{image_format}"] for k in keys]
    caption_rows = [[k, i, text] for k in keys for i, text in enumerate(items[k].captions)]
    counts: dict[str, dict[str, int]] = {}
    for k in keys:
        c = counts.setdefault(items[k].split, {"images": 0, "captions": 0})
        c["images"] += 1
        c["captions"] += len(items[k].captions)
    skipped = {"unreadable_images": len(failed), **scan.notes.counts()}
    converted = dict(sorted(Counter(r["mode"] for r in records.values() if r.get("mode")).items()))
    warn_counts = {
        "non_utf8_caption_files": len(scan.notes.non_utf8_caption_files),
        "decoder_warnings": sum(len(r.get("warnings", [])) for r in records.values()),
        "upscaled_images": sum(1 for r in records.values() if r.get("upscaled")),
    }
    skipped.pop("non_utf8_caption_files")  # decoded, not skipped: listed under warnings

    from ratlip_cli import __version__

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "layout": layout,
        "source": source_str,
        "size": size,
        "image_format": image_format,
        "resize": "square images rendered at `size`" if layout == "shapes" else RESIZE_RULE,
        "split_source": scan.split_source,
        "counts": dict(sorted(counts.items())),
        "total": {"images": len(image_rows), "captions": len(caption_rows)},
        "skipped": skipped,
        "converted_to_rgb": converted,
        "warnings": warn_counts,
        "extra": extra or {},
        "created": utc_timestamp(),
        "ratlip_version": __version__,
    }
    try:
        write_text(out / IMAGES_CSV, csv_text(["key", "split", "path"], image_rows))
        write_text(out / CAPTIONS_CSV, csv_text(["key", "caption_idx", "text"], caption_rows))
        write_text(out / REPORT, _report_text(layout, source_str, scan.notes, failed, records))
        write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    except OSError as exc:
        raise RatlipError(f"cannot write the prepared dataset to {out}: {exc}") from None
    return PrepareSummary(
        root=out,
        layout=layout,
        counts=manifest["counts"],
        processed=len(tasks),
        reused=len(items) - len(tasks),
        skipped=skipped,
        converted=converted,
        warnings=warn_counts,
        seconds=time.perf_counter() - start,
        notes=list(scan.notes.info),
    )


# --------------------------------------------------------------------------- the reader


@dataclass
class PreparedDataset:
    """A prepared dataset in memory: the index tables, the manifest and the root folder."""

    root: Path
    images: Any  # pandas.DataFrame: key, split, path
    captions: Any  # pandas.DataFrame: key, caption_idx, text
    manifest: dict[str, Any]

    @property
    def splits(self) -> list[str]:
        """Split names present, sorted."""
        return sorted(self.images["split"].unique().tolist())

    def _check_split(self, split: str) -> None:
        if split not in set(self.images["split"]):
            raise RatlipError(
                f"split '{split}' is not in the prepared dataset at {self.root} (splits: {', '.join(self.splits)})"
            )

    def split_images(self, split: str):
        """The rows of `images` for one split, sorted by key (index reset)."""
        self._check_split(split)
        rows = self.images[self.images["split"] == split]
        return rows.sort_values("key", kind="stable").reset_index(drop=True)

    def split_pairs(self, split: str):
        """Every (key, path, caption_idx, text) of one split, sorted by key then caption_idx."""
        rows = self.split_images(split)[["key", "path"]]
        pairs = rows.merge(self.captions, on="key", how="inner")
        return pairs.sort_values(["key", "caption_idx"], kind="stable").reset_index(drop=True)

    def split_captions(self, split: str) -> list[str]:
        """The fixed list of every caption of one split (by key, then caption_idx): for eval and sampling."""
        return self.split_pairs(split)["text"].tolist()

    def captions_by_key(self) -> dict[str, list[str]]:
        """key -> its captions in caption_idx order."""
        ordered = self.captions.sort_values(["key", "caption_idx"], kind="stable")
        return {k: g["text"].tolist() for k, g in ordered.groupby("key", sort=False)}

    def image_path(self, key_or_path: str) -> Path:
        """Absolute path of an image, from its key or its `path` column value."""
        if key_or_path.startswith(f"{IMAGE_DIR}/"):
            return self.root / key_or_path
        return self.root / IMAGE_DIR / f"{key_or_path}.{self.manifest.get('image_format', 'jpg')}"


def _prepare_hint(root: Path) -> str:
    from ratlip_cli.data import KINDS

    kind = root.name if root.name in KINDS else "<kind>"
    if kind == "shapes":
        return f"run `ratlip prepare shapes --out {root}`"
    return f"run `ratlip prepare {kind} --src ... --out {root}`"


def load_prepared(root: str | Path) -> PreparedDataset:
    """Read a prepared dataset; a one-line RatlipError naming the fix when there is none at `root`."""
    import pandas as pd

    root = Path(root)
    if not (root / MANIFEST).is_file():
        raise RatlipError(f"no prepared dataset at {root}; {_prepare_hint(root)}")
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RatlipError(f"{root / MANIFEST} is unreadable; {_prepare_hint(root)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RatlipError(f"{root / MANIFEST} is not a ratlip prepared-dataset manifest")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise RatlipError(
            f"{root} was prepared by a newer ratlip (format {manifest.get('format_version')}); upgrade ratlip"
        )
    tables = {}
    for name, dtypes in (
        (IMAGES_CSV, {"key": str, "split": str, "path": str}),
        (CAPTIONS_CSV, {"key": str, "caption_idx": "int64", "text": str}),
    ):
        path = root / name
        if not path.is_file():
            raise RatlipError(f"prepared dataset at {root} is incomplete (no {name}); {_prepare_hint(root)}")
        try:
            table = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_filter=False)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise RatlipError(f"cannot read {path}: {exc}") from None
        if list(table.columns) != list(dtypes):
            raise RatlipError(f"{path} must have the columns {', '.join(dtypes)}")
        tables[name] = table
    return PreparedDataset(root=root, images=tables[IMAGES_CSV], captions=tables[CAPTIONS_CSV], manifest=manifest)
