"""`ratlip prepare`: pick the layout scanner, write the prepared dataset, print a summary."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ratlip_cli.data import KINDS
from ratlip_cli.data.prepared import REPORT, PrepareSummary, write_prepared
from ratlip_cli.data.shapes import DEFAULT_SIZE, shapes_scan
from ratlip_cli.data.shards import DEFAULT_SHARD_MB, is_shard_dataset, write_shards
from ratlip_cli.errors import RatlipError

SOURCE_HELP = {
    "cub": "the folder holding CUB_200_2011/, text/, train/ and test/ (DF-GAN's data/birds)",
    "oxford": "the folder holding jpg/ and text_c10/",
    "celeba-tiny": "the folder holding images/ and text/",
    "coco": "the folder holding images/train2014, images/val2014 and annotations/",
    "folder": "the folder of images with same-stem .txt caption files",
    "webdataset": "the folder of img2dataset/WebDataset tar shards (<key>.jpg + <key>.txt per sample)",
}
FORMATS = ("prepared", "shards")


def resolve_defaults(kind: str, preset: str | None, out: str | Path | None, size: int | None) -> tuple[Path, int]:
    """--out and --size defaults: the preset's data.root and data.prepared_size (preset = the kind's name)."""
    from ratlip_cli.config import DataConfig, available_presets, resolve_config

    name = preset or (kind if kind in available_presets() else None)
    data = resolve_config(name).data if name else DataConfig(root=f"data/{kind}")
    return Path(out) if out else Path(data.root), int(size) if size else data.prepared_size


@dataclass
class PrepareOptions:
    """Everything `ratlip prepare` was asked for (the CLI fills this in, as for every command)."""

    kind: str
    src: Optional[Path] = None
    out: Optional[Path] = None
    size: Optional[int] = None
    preset: Optional[str] = None
    split_file: Optional[Path] = None
    workers: int = 0
    overwrite: bool = False
    seed: int = 0
    fmt: str = "prepared"
    shard_mb: Optional[float] = None
    test_percent: Optional[int] = None
    decoded: bool = False


def run_prepare(opts: PrepareOptions) -> PrepareSummary:
    """`ratlip prepare`: prepare the dataset and print its summary table."""
    summary = prepare_dataset(
        opts.kind, opts.src, opts.out, opts.size, preset=opts.preset, split_file=opts.split_file,
        workers=opts.workers, overwrite=opts.overwrite, seed=opts.seed, fmt=opts.fmt, shard_mb=opts.shard_mb,
        test_percent=opts.test_percent, decoded=opts.decoded,
    )
    print_summary(summary)
    return summary


def prepare_dataset(
    kind: str,
    src: str | Path | None = None,
    out: str | Path | None = None,
    size: int | None = None,
    *,
    preset: str | None = None,
    split_file: str | Path | None = None,
    workers: int = 0,
    overwrite: bool = False,
    seed: int = 0,
    fmt: str = "prepared",
    shard_mb: float | None = None,
    test_percent: int | None = None,
    decoded: bool = False,
) -> PrepareSummary:
    """Prepare dataset `kind` (one of KINDS) from `src` into `out` in format `fmt` (prepared or
    shards); resumable and idempotent. `decoded`: also write the decoded copy the training loader
    crops from (`data/decoded.py`; prepared format only)."""
    if decoded and fmt == "shards":
        raise RatlipError("--decoded applies to --format prepared only (shards are streamed and decoded per sample)")
    summary = _prepare(kind, src, out, size, preset=preset, split_file=split_file, workers=workers,
                       overwrite=overwrite, seed=seed, fmt=fmt, shard_mb=shard_mb, test_percent=test_percent)
    if decoded:
        from ratlip_cli.data.decoded import write_decoded

        write_decoded(summary.root)
    return summary


def _prepare(kind: str, src, out, size, *, preset, split_file, workers, overwrite, seed, fmt, shard_mb,
             test_percent) -> PrepareSummary:
    if kind not in KINDS:
        raise RatlipError(f"unknown dataset kind '{kind}'; choose one of: {', '.join(KINDS)}")
    if fmt not in FORMATS:
        raise RatlipError(f"unknown --format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    if shard_mb is not None and fmt != "shards":
        raise RatlipError("--shard-mb applies to --format shards only")
    if test_percent is not None and kind != "webdataset":
        raise RatlipError("--test-percent applies to `ratlip prepare webdataset` only")
    out_path, size = resolve_defaults(kind, preset, out, size)
    if size < 8:
        raise RatlipError(f"--size must be at least 8, got {size}")
    if split_file is not None and kind != "folder":
        raise RatlipError("--split-file applies to `ratlip prepare folder` only")
    if split_file is not None and not Path(split_file).is_file():
        raise RatlipError(f"split file {split_file} does not exist")
    if kind == "shapes":
        if src is not None:
            raise RatlipError("`ratlip prepare shapes` generates its images; it takes no --src")
        return generate_shapes(out_path, size, seed, workers=max(workers, 1), overwrite=overwrite, fmt=fmt,
                               shard_mb=shard_mb or DEFAULT_SHARD_MB)
    if src is None:
        raise RatlipError(f"`ratlip prepare {kind}` needs --src DIR: {SOURCE_HELP[kind]}")
    src = Path(src).expanduser()
    workers = workers if workers > 0 else min(8, os.cpu_count() or 1)
    if kind == "cub":
        from ratlip_cli.data.cub import scan
    elif kind == "oxford":
        from ratlip_cli.data.oxford import scan
    elif kind == "celeba-tiny":
        from ratlip_cli.data.celeba import scan
    elif kind == "coco":
        from ratlip_cli.data.coco import scan
    elif kind == "webdataset":
        from ratlip_cli.data.img2dataset import TEST_PERCENT
        from ratlip_cli.data.img2dataset import scan as scan_tars

        def scan(path: Path):
            percent = TEST_PERCENT if test_percent is None else test_percent
            return scan_tars(path, test_percent=percent, exclude=out_path)
    else:
        from ratlip_cli.data.folder import scan as scan_folder

        def scan(path: Path):
            return scan_folder(path, split_file=Path(split_file) if split_file else None, exclude=out_path)

    from ratlip_cli.console import console

    with console.status(f"scanning {src} ({kind} layout)"):
        result = scan(src)
    if not result.items:
        raise RatlipError(f"found no captioned images in {src} ({kind} layout: {SOURCE_HELP[kind]})")
    if fmt == "shards":
        return write_shards(out_path, kind, src, result, size, workers=workers, overwrite=overwrite,
                            shard_mb=shard_mb or DEFAULT_SHARD_MB)
    return write_prepared(out_path, kind, src, result, size, workers=workers, overwrite=overwrite)


def print_summary(summary: PrepareSummary) -> None:
    """A table of images and captions per split, what was skipped, and warnings (with counts)."""
    from rich.table import Table

    from ratlip_cli.console import console, warn

    what = "as tar shards " if is_shard_dataset(summary.root) else ""
    console.print(f"prepared [bold]{summary.layout}[/bold] {what}in {summary.root}", highlight=False)
    table = Table()
    table.add_column("split")
    table.add_column("images", justify="right")
    table.add_column("captions", justify="right")
    for split, c in summary.counts.items():
        table.add_row(split, str(c["images"]), str(c["captions"]))
    console.print(table)
    console.print(
        f"{summary.processed - summary.skipped['unreadable_images']} images written, "
        f"{summary.reused} already done, in {summary.seconds:.1f} s",
        highlight=False,
    )
    report = summary.root / REPORT
    for name, count in summary.skipped.items():
        if count:
            warn(f"{count} {name.replace('_', ' ')} skipped (listed in {report})")
    if summary.warnings.get("non_utf8_caption_files"):
        warn(
            f"{summary.warnings['non_utf8_caption_files']} caption files were not UTF-8 and were decoded "
            f"with replacement characters (listed in {report})"
        )
    if summary.warnings.get("decoder_warnings"):
        warn(f"{summary.warnings['decoder_warnings']} image decoder warnings (listed in {report})")
    if summary.warnings.get("upscaled_images"):
        warn(f"{summary.warnings['upscaled_images']} images were smaller than the target size and were upscaled")
    if summary.converted:
        modes = ", ".join(f"{n} {mode}" for mode, n in summary.converted.items())
        console.print(f"converted to RGB: {modes}", highlight=False)


def generate_shapes(
    out: str | Path,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    *,
    train_per_combo: int = 32,
    test_per_combo: int = 2,
    novel_per_combo: int = 16,
    workers: int = 1,
    overwrite: bool = False,
    fmt: str = "prepared",
    shard_mb: float = 1000,
):
    """Write the shapes dataset under `out` (PNG images; `fmt` prepared or shards); returns a PrepareSummary.

    Defaults: 3,072 train images (48 combinations x 2 sizes x 32) and 384 test images (192 of seen
    combinations, 192 of the 6 held-out ones), 5 captions each. Resumable like every `prepare`.
    """
    scan, extra = shapes_scan(seed, train_per_combo, test_per_combo, novel_per_combo)
    if fmt == "shards":
        return write_shards(out, "shapes", None, scan, size, image_format="png", workers=workers,
                            overwrite=overwrite, extra=extra, shard_mb=shard_mb)
    return write_prepared(
        out, "shapes", None, scan, size, image_format="png", workers=workers, overwrite=overwrite, extra=extra
    )
