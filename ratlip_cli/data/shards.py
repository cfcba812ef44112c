"""Captioned tar shards (the WebDataset layout): the resumable writer `write_shards` and `load_shards`.

Layout of a shard dataset ROOT (see docs/data.md):
    manifest.json   format, counts, skipped counts and every shard (name, split, samples, bytes, sha256); written last
    train/train-000000.tar ...   test/test-000000.tar ...
        <mkey>.jpg|png   the image, stored exactly like the prepared format's
        <mkey>.txt       its captions, one per line
        <mkey>.json      {"key", "split", "captions", "width", "height"}
    report.txt      every skipped or converted file, with counts
    .prepare-journal.jsonl   one line per finished shard (what makes a re-run resume)

Samples of a split are written in the order of a hash of their key, so every shard is a random
sample of its split and the same input always gives the same shards, byte for byte.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from ratlip_cli.data.prepared import (
    JOURNAL,
    MANIFEST,
    REPORT,
    RESIZE_RULE,
    PrepareSummary,
    _clear,
    _params,
    _report_text,
    _run,
    encode_image,
    load_item,
)
from ratlip_cli.data.raw import RawItem, ScanResult
from ratlip_cli.errors import RatlipError
from ratlip_cli.progress import progress_bar
from ratlip_cli.files import write_text, utc_timestamp

FORMAT = "ratlip-shards"
FORMAT_VERSION = 1
DEFAULT_SHARD_MB = 1000
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# The manifest keeps the byte offset of every INDEX_EVERY-th sample of a shard, so a reader that
# starts mid-shard seeks close to its first sample instead of parsing every header before it.
INDEX_EVERY = 256
_BLOCK = 512


def member_key(key: str) -> str:
    """The tar member stem of `key`: `%` and `.` percent-encoded, so WebDataset's split of a member
    name at the first dot of its file name gives back one sample per key."""
    return key.replace("%", "%25").replace(".", "%2E")


def order_key(key: str) -> str:
    """Where a sample goes in its split's shards: a hash of its key (stable, and well mixed)."""
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def shard_name(split: str, number: int) -> str:
    """`train/train-000012.tar`: the shard's path relative to the dataset root."""
    return f"{split}/{split}-{number:06d}.tar"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _padded(n: int) -> int:
    return _BLOCK + -(-n // _BLOCK) * _BLOCK


def _encode_task(task: tuple) -> dict[str, Any]:
    """Worker: one image decoded, resized and encoded to bytes (`data`), or the failure record."""
    key, src, spec, bbox, size, image_format, member = task
    img, record = load_item(key, src, spec, bbox, size, member)
    if img is not None:
        record["width"], record["height"] = img.size
        record["data"] = encode_image(img, image_format)
    return record


class _ShardWriter:
    """One tar shard written to `<name>.tmp` and renamed into place by `close`; members are
    reproducible (mtime 0, root owner, mode 644), so equal input gives equal bytes."""

    def __init__(self, root: Path, name: str) -> None:
        self.name, self.path = name, root / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.tar = tarfile.open(self.tmp, mode="w", format=tarfile.PAX_FORMAT)
        self.keys: list[str] = []
        self.captions = 0
        self.index: list[int] = []  # byte offset of samples 0, INDEX_EVERY, 2 * INDEX_EVERY, ...

    @property
    def bytes(self) -> int:
        return self.tar.offset

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self.tar.addfile(info, io.BytesIO(data))

    def add(self, item: RawItem, image: bytes, image_format: str, width: int, height: int) -> None:
        if len(self.keys) % INDEX_EVERY == 0:
            self.index.append(self.tar.offset)
        stem = member_key(item.key)
        meta = {"key": item.key, "split": item.split, "captions": item.captions, "width": width, "height": height}
        self._add(f"{stem}.{image_format}", image)
        self._add(f"{stem}.txt", ("\n".join(item.captions) + "\n").encode("utf-8"))
        self._add(f"{stem}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        self.keys.append(item.key)
        self.captions += len(item.captions)

    def close(self) -> dict[str, Any]:
        self.tar.close()
        with open(self.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)
        return {
            "name": self.name,
            "split": self.name.split("/", 1)[0],
            "samples": len(self.keys),
            "captions": self.captions,
            "bytes": self.path.stat().st_size,
            "sha256": file_sha256(self.path),
            "index": self.index,
        }


def _read_shard_journal(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    header, shards = None, []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None, []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short by an interruption
        if isinstance(rec, dict) and "header" in rec:
            header = rec["header"]
        elif isinstance(rec, dict) and isinstance(rec.get("shard"), dict):
            shards.append(rec["shard"])
    return header, shards


def _check_out(out: Path, params: dict[str, Any], overwrite: bool) -> list[dict[str, Any]]:
    """Make sure `out` is new, or ours with the same parameters; returns the journal's finished shards."""
    if out.exists() and not out.is_dir():
        raise RatlipError(f"--out {out} is a file; choose a folder")
    ours = (out / JOURNAL).is_file() or (out / MANIFEST).is_file()
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise RatlipError(f"--out {out} is not empty and holds no prepared dataset; choose a new or empty folder")
    if not ours:
        return []
    header, shards = _read_shard_journal(out / JOURNAL)
    if header is None and (out / MANIFEST).is_file():
        try:
            old = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
            header = old.get("params") if old.get("format") == FORMAT else {"format": old.get("format")}
        except (OSError, ValueError, AttributeError):
            header = None
    if header is not None and header != params:
        if not overwrite:
            diff = sorted(k for k in set(params) | set(header) if header.get(k) != params.get(k))
            raise RatlipError(
                f"{out} holds a dataset prepared with other settings ({', '.join(diff)}); "
                "pass --overwrite to replace it or choose another --out"
            )
        _clear(out)
        return []
    if overwrite:
        _clear(out)
        return []
    return shards if header is not None else []


def _valid_prefix(out: Path, split: str, shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The journal's shards of `split` numbered 0, 1, ... whose files are still there, whole."""
    by_name = {s["name"]: s for s in shards if s.get("split") == split}
    kept = []
    while shard_name(split, len(kept)) in by_name:
        s = by_name[shard_name(split, len(kept))]
        path = out / s["name"]
        if not path.is_file() or path.stat().st_size != s.get("bytes"):
            break
        kept.append(s)
    return kept


def write_shards(
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
    shard_mb: float = DEFAULT_SHARD_MB,
) -> PrepareSummary:
    """Write `scan`'s items as tar shards of about `shard_mb` MB under `out`, resuming an interrupted run.

    The same decoding, validation and report as `write_prepared`. Each shard is written to
    `<name>.tmp` and renamed into place, then journalled; a re-run keeps every journalled shard
    whose file is whole and writes the rest of its split again from there.
    """
    start = time.perf_counter()
    out = Path(out)
    if size < 8:
        raise RatlipError(f"--size must be at least 8, got {size}")
    if not shard_mb > 0:
        raise RatlipError(f"--shard-mb must be positive, got {shard_mb}")
    shard_bytes = int(shard_mb * 1e6)
    source_str = str(Path(source).resolve()) if source is not None else None
    params = {**_params(layout, source_str, size, image_format, extra), "format": "shards", "shard_bytes": shard_bytes}
    journalled = _check_out(out, params, overwrite)
    journal_path = out / JOURNAL
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not journal_path.is_file():  # the header first: it marks the folder as ours
            write_text(journal_path, json.dumps({"header": params}) + "\n")
    except OSError as exc:
        raise RatlipError(f"cannot create the shard dataset folder {out}: {exc.strerror}") from None

    items: dict[str, RawItem] = {}
    for item in scan.items:
        items.setdefault(item.key, item)
    by_split: dict[str, list[str]] = {}
    for key in sorted(items, key=order_key):
        by_split.setdefault(items[key].split, []).append(key)

    shards: list[dict[str, Any]] = []
    records: dict[str, dict[str, Any]] = {}
    failed: list[tuple[str, str]] = []
    reused = processed = 0
    try:
        with open(journal_path, "a+", encoding="utf-8") as journal, progress_bar() as progress:
            if journal.tell() > 0:
                journal.seek(journal.tell() - 1)
                if journal.read(1) != "\n":  # a line cut short by an interruption
                    journal.write("\n")
            bar = progress.add_task(f"writing {layout} shards", total=len(items))
            for split, keys in sorted(by_split.items()):
                kept = _valid_prefix(out, split, journalled)
                done = set()
                for s in kept:
                    done.update(s["keys"])
                    records.update(s.get("records", {}))
                shards.extend({k: v for k, v in s.items() if k not in ("keys", "records")} for s in kept)
                reused += len(done)
                progress.advance(bar, len(done))
                todo = [items[k] for k in keys if k not in done]
                processed += len(todo)
                tasks = [(i.key, str(i.src) if i.src is not None else None, i.spec, i.bbox, size, image_format, i.member)
                         for i in todo]
                writer: _ShardWriter | None = None
                number = len(kept)
                notable: dict[str, dict[str, Any]] = {}

                def finish(w: _ShardWriter) -> None:
                    info = w.close()
                    journal.write(json.dumps({"shard": {**info, "keys": w.keys, "records": notable}}) + "\n")
                    journal.flush()
                    shards.append(info)
                    notable.clear()

                for item, rec in zip(todo, _run(tasks, workers, _encode_task)):
                    progress.advance(bar)
                    if not rec["ok"]:
                        failed.append((rec["key"], rec["error"]))
                        continue
                    data = rec.pop("data")
                    width, height = rec.pop("width"), rec.pop("height")
                    need = _padded(len(data)) + 2 * _padded(200 + sum(len(c) for c in item.captions))
                    if writer is not None and writer.keys and writer.bytes + need > shard_bytes:
                        finish(writer)
                        writer = None
                    if writer is None:
                        writer = _ShardWriter(out, shard_name(split, number))
                        number += 1
                    writer.add(item, data, image_format, width, height)
                    records[item.key] = rec
                    if len(rec) > 2:  # more than key and ok: a conversion, upscale or warning to report
                        notable[item.key] = rec
                if writer is not None:
                    finish(writer)
    except OSError as exc:
        raise RatlipError(f"cannot write the shard dataset to {out}: {exc}") from None

    listed = {s["name"] for s in shards}
    for split in by_split:
        for stale in list((out / split).glob("*.tar")) + list((out / split).glob("*.tar.tmp")):
            if stale.relative_to(out).as_posix() not in listed:
                stale.unlink(missing_ok=True)
    failed.sort()
    counts: dict[str, dict[str, int]] = {}
    for s in shards:
        c = counts.setdefault(s["split"], {"images": 0, "captions": 0, "shards": 0, "bytes": 0})
        c["images"] += s["samples"]
        c["captions"] += s["captions"]
        c["shards"] += 1
        c["bytes"] += s["bytes"]
    skipped = {"unreadable_images": len(failed), **scan.notes.counts()}
    skipped.pop("non_utf8_caption_files")  # decoded, not skipped: listed under warnings
    converted = dict(sorted(Counter(r["mode"] for r in records.values() if r.get("mode")).items()))
    warn_counts = {
        "non_utf8_caption_files": len(scan.notes.non_utf8_caption_files),
        "decoder_warnings": sum(len(r.get("warnings", [])) for r in records.values()),
        "upscaled_images": sum(1 for r in records.values() if r.get("upscaled")),
    }

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
        "shard_bytes": shard_bytes,
        "counts": dict(sorted(counts.items())),
        "total": {
            "images": sum(c["images"] for c in counts.values()),
            "captions": sum(c["captions"] for c in counts.values()),
        },
        "skipped": skipped,
        "converted_to_rgb": converted,
        "warnings": warn_counts,
        "extra": extra or {},
        "params": params,
        "shards": sorted(shards, key=lambda s: s["name"]),
        "created": utc_timestamp(),
        "ratlip_version": __version__,
    }
    try:
        write_text(out / REPORT, _report_text(layout, source_str, scan.notes, failed, records))
        write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    except OSError as exc:
        raise RatlipError(f"cannot write the shard dataset to {out}: {exc}") from None
    return PrepareSummary(
        root=out,
        layout=layout,
        counts={k: {"images": v["images"], "captions": v["captions"]} for k, v in manifest["counts"].items()},
        processed=processed,
        reused=reused,
        skipped=skipped,
        converted=converted,
        warnings=warn_counts,
        seconds=time.perf_counter() - start,
        notes=list(scan.notes.info),
    )


# --------------------------------------------------------------------------- the reader


@dataclass
class Sample:
    """One sample read from a shard: its key, index in the shard, image bytes and captions."""

    key: str
    index: int
    image: bytes | None
    captions: list[str]


def split_member(name: str) -> tuple[str, str]:
    """`a/b.c.jpg` -> (`a/b`, `c.jpg`): WebDataset's rule (the key ends at the first dot of the file name)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _open_tar(location: str, offset: int = 0):
    """(tarfile, process or None, file or None) for a local path (read from byte `offset`, a member
    header) or a `pipe:COMMAND` that writes the tar to stdout; the caller closes all three."""
    if location.startswith("pipe:"):
        proc = subprocess.Popen(location[5:], shell=True, stdout=subprocess.PIPE)
        try:
            return tarfile.open(fileobj=proc.stdout, mode="r|"), proc, None
        except tarfile.TarError as exc:
            if proc.wait() != 0:
                raise RatlipError(f"the shard command `{location[5:]}` failed with exit status {proc.returncode}") from None
            raise RatlipError(f"the shard command `{location[5:]}` wrote no tar: {exc}") from None
    try:
        if not offset:
            return tarfile.open(location, mode="r:"), None, None
        fh = open(location, "rb")
        fh.seek(offset)
        try:
            return tarfile.open(fileobj=fh, mode="r:"), None, fh
        except BaseException:
            fh.close()
            raise
    except (OSError, tarfile.TarError) as exc:
        raise RatlipError(f"cannot read shard {location}: {exc}") from None


def iter_tar_groups(
    location: str, want=None, stop: int | None = None, start: int = 0, index: list[int] | tuple = ()
) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """(index, member key, {ext: bytes}) per sample of a tar, in order, from sample `start` (or earlier)
    up to sample `stop`; samples whose index `want(i)` rejects are skipped without reading their data
    (a seek on local files). `index` (the manifest's offsets of every INDEX_EVERY-th sample) lets a
    local read begin near `start`."""
    k = min(start // INDEX_EVERY, len(index) - 1) if index and start > 0 and not location.startswith("pipe:") else 0
    tar, proc, fh = _open_tar(location, index[k] if k > 0 else 0)
    i, current, parts, keep, complete = k * INDEX_EVERY - 1, None, {}, True, False
    try:
        while True:
            member = tar.next()
            if member is None:
                complete = True
                break
            tar.members.clear()  # TarFile keeps every header it read; a shard has tens of thousands
            if not member.isfile():
                continue
            key, ext = split_member(member.name)
            if key != current:
                if current is not None and keep:
                    yield i, current, parts
                i, current, parts = i + 1, key, {}
                if stop is not None and i >= stop:
                    current = None
                    break
                keep = want is None or want(i)
            if keep:
                data = tar.extractfile(member)
                parts[ext] = data.read() if data is not None else b""
        if current is not None and keep:
            yield i, current, parts
    except tarfile.TarError as exc:
        raise RatlipError(f"shard {location} is damaged: {exc}") from None
    finally:
        tar.close()
        if fh is not None:
            fh.close()
        if proc is not None:
            if proc.stdout is not None:
                proc.stdout.close()
            if proc.wait() != 0 and complete:
                raise RatlipError(f"the shard command `{location[5:]}` failed with exit status {proc.returncode}")


def decode_sample(index: int, member: str, parts: dict[str, bytes]) -> Sample:
    """A Sample from a tar group: the key from `.json` (else the member key), captions from `.txt`."""
    meta: dict[str, Any] = {}
    if "json" in parts:
        try:
            meta = json.loads(parts["json"].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            meta = {}
    image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
    text = parts.get("txt", b"").decode("utf-8", errors="replace")
    captions = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    return Sample(key=str(meta.get("key", member)), index=index, image=image, captions=captions)


class TarMember(NamedTuple):
    """An image stored as the byte range [offset, offset + size) of a tar file."""

    path: Path
    offset: int
    size: int

    def open(self):
        """A binary file object of the image."""
        from ratlip_cli.data.raw import open_source

        return open_source(self.path, (self.offset, self.size))


@dataclass
class ShardInfo:
    """One shard of the manifest."""

    name: str
    split: str
    samples: int
    captions: int
    bytes: int
    sha256: str
    index: list[int] = field(default_factory=list)


@dataclass
class ShardSet:
    """A shard dataset: the manifest, its shards, and where to read them (`url`: a template with
    `{name}`, e.g. `pipe:aws s3 cp s3://bucket/cc12m/{name} -`; empty = files under `root`)."""

    root: Path
    manifest: dict[str, Any]
    shards: list[ShardInfo]
    url: str = ""

    @property
    def splits(self) -> list[str]:
        """Split names present, sorted."""
        return sorted({s.split for s in self.shards})

    def split_shards(self, split: str) -> list[ShardInfo]:
        """The shards of one split in manifest (name) order."""
        found = [s for s in self.shards if s.split == split]
        if not found:
            raise RatlipError(
                f"split '{split}' is not in the shard dataset at {self.root} (splits: {', '.join(self.splits)})"
            )
        return found

    def location(self, shard: ShardInfo) -> str:
        """Where to read `shard`: `url` with `{name}` filled in, else the file under `root`."""
        if self.url:
            return self.url.replace("{name}", shard.name)
        return str(self.root / shard.name)

    def iter_split(self, split: str, limit: int = 0) -> Iterator[Sample]:
        """Every sample of a split in shard order (the first `limit` when > 0)."""
        n = 0
        for shard in self.split_shards(split):
            for index, member, parts in iter_tar_groups(self.location(shard)):
                yield decode_sample(index, member, parts)
                n += 1
                if limit and n >= limit:
                    return

    def split_captions(self, split: str, limit: int = 0) -> list[list[str]]:
        """The captions of a split's samples in shard order (the first `limit` samples when > 0)."""
        return [s.captions for s in self.iter_split(split, limit)]

    def index_split(self, split: str) -> list[tuple[str, list[str], TarMember]]:
        """(key, captions, where its image lies) per sample of a split, in shard order; for local shards only
        (evaluation reads reference images by byte range, in key order)."""
        out = []
        for shard in self.split_shards(split):
            location = self.location(shard)
            if location.startswith("pipe:"):
                raise RatlipError(
                    f"reading split '{split}' by image needs local shards, but data.shard_url is a pipe; "
                    f"copy the {split}/ shards next to {self.root / MANIFEST} and unset data.shard_url"
                )
            tar, _, _ = _open_tar(location)
            groups: dict[str, dict[str, Any]] = {}
            order: list[str] = []
            with tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = split_member(member.name)
                    if key not in groups:
                        groups[key] = {}
                        order.append(key)
                    if ext in IMAGE_EXTS:
                        groups[key]["image"] = TarMember(Path(location), member.offset_data, member.size)
                    elif ext in ("txt", "json"):
                        fh = tar.extractfile(member)
                        groups[key][ext] = fh.read() if fh is not None else b""
            for i, key in enumerate(order):
                g = groups[key]
                if "image" not in g:
                    raise RatlipError(f"sample '{key}' of shard {location} has no image; prepare the dataset again")
                sample = decode_sample(i, key, {k: v for k, v in g.items() if k != "image"})
                out.append((sample.key, sample.captions, g["image"]))
        return out

    def split_pairs(self, split: str):
        """Every (key, path, caption_idx, text) of one split sorted by key, caption_idx, like
        `PreparedDataset.split_pairs` (`path` is empty). Reads the whole split: for test splits."""
        import pandas as pd

        rows = [(s.key, "", i, t) for s in self.iter_split(split) for i, t in enumerate(s.captions)]
        table = pd.DataFrame(rows, columns=["key", "path", "caption_idx", "text"])
        return table.sort_values(["key", "caption_idx"], kind="stable").reset_index(drop=True)

    def verify(self) -> list[str]:
        """Names of local shards whose size or SHA-256 differs from the manifest's."""
        bad = []
        for s in self.shards:
            path = self.root / s.name
            if not path.is_file() or path.stat().st_size != s.bytes or file_sha256(path) != s.sha256:
                bad.append(s.name)
        return bad


def is_shard_dataset(root: str | Path) -> bool:
    """True when `root/manifest.json` says the folder holds tar shards."""
    try:
        return json.loads((Path(root) / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_shards(root: str | Path, url: str = "") -> ShardSet:
    """Read a shard dataset's manifest; a one-line RatlipError naming the fix when there is none."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise RatlipError(f"no shard dataset at {root}; run `ratlip prepare <kind> --src ... --out {root} --format shards`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RatlipError(f"{path} is unreadable; prepare the dataset again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RatlipError(f"{path} is not a ratlip shard-dataset manifest")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise RatlipError(f"{root} was written by a newer ratlip (format {manifest.get('format_version')}); upgrade ratlip")
    if url and "{name}" not in url:
        raise RatlipError(f"data.shard_url must contain {{name}} (the shard's path in the manifest), got '{url}'")
    try:
        fields = ShardInfo.__dataclass_fields__
        shards = [ShardInfo(**{k: s[k] for k in fields if k in s or k != "index"}) for s in manifest["shards"]]
    except (KeyError, TypeError):
        raise RatlipError(f"{path} has a malformed shard list; prepare the dataset again") from None
    return ShardSet(root=root, manifest=manifest, shards=shards, url=url)


def open_dataset(root: str | Path, fmt: str = "auto", shard_url: str = ""):
    """The dataset at `root`: a ShardSet for tar shards, else a PreparedDataset; `fmt` (data.format)
    auto, prepared or shards says what is expected there."""
    from ratlip_cli.data.prepared import load_prepared

    shards = is_shard_dataset(root)
    if fmt == "prepared" and shards:
        raise RatlipError(f"{root} holds tar shards but data.format is prepared; set data.format=shards (or auto)")
    if fmt == "shards" or shards:
        return load_shards(root, shard_url)
    if shard_url:
        raise RatlipError(f"data.shard_url is set but {root} holds no shard dataset; unset it or point data.root at shards")
    return load_prepared(root)
