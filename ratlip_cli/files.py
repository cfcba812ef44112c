"""The one way ratlip writes a file: atomically, so a file under its final name is always complete.

Every writer goes through `atomic_write`: the content goes to a temp file in the same folder
(``.NAME.tmp-PID``), is flushed and fsynced, renamed over the final name with `os.replace`, and
the folder is fsynced. A crash, SIGKILL or full disk at any moment leaves either the old file or
the new one, never a mix; SIGINT and SIGTERM arriving during a write are held until the file is in
place (then delivered as usual). A failed write removes its temp file and raises `WriteError` (a one-line `RatlipError`).

The thin wrappers below (bytes, text, JSON, CSV, `torch.save`, safetensors, several files at once)
only produce the bytes; fault-injection tests patch `_fill`, the single place bytes reach a disk.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import signal
import struct
import threading
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping, Sequence

from ratlip_cli.errors import RatlipError

TEMP_MARK = ".tmp-"
_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class WriteError(RatlipError):
    """A file could not be written (disk full, no permission, ...); nothing under its name changed."""

    def __init__(self, message: str, path: str | Path = "", error: int | None = None) -> None:
        super().__init__(message, path, error)  # all three in args: picklable across worker processes
        self.path = Path(path)
        self.errno = error

    def __str__(self) -> str:
        return str(self.args[0])

    @classmethod
    def from_os(cls, path: str | Path, exc: OSError) -> WriteError:
        """The error for an OSError raised while writing ``path``."""
        reason = exc.strerror or str(exc) or type(exc).__name__
        hint = "; free some space and try again" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        return cls(f"cannot write {path}: {reason}{hint}", path, exc.errno)


def check_name(name: str, key: str) -> str:
    """``name`` when it is exactly one file or folder name, else a one-line `RatlipError` naming ``key``.

    The one rule for every user-given name that becomes a path component (``train.name``,
    ``data.name``, ``ratlip import --name``, ...): not empty; no ``/`` or ``\\``; no control
    characters (NUL included); no leading dot (so never ``.`` or ``..``, a hidden folder, or the
    ``.NAME.tmp-PID`` scheme of temp files); no leading or trailing whitespace.
    """
    name = str(name)
    why = ""
    if not name:
        why = "it is empty"
    elif "/" in name or "\\" in name:
        why = "it contains a path separator (/ or \\)"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        why = "it contains a control character"
    elif name.startswith("."):
        why = "it starts with a dot"
    elif name != name.strip():
        why = "it starts or ends with whitespace"
    if why:
        raise RatlipError(f"{key} must be one folder name, got {name!r}: {why}")
    return name


def temp_path(path: str | Path) -> Path:
    """The temp file beside ``path`` that this process writes before renaming it into place."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def is_temp(path: str | Path) -> bool:
    """Whether ``path`` is a temp file left by `atomic_write` (any process)."""
    name = Path(path).name
    return name.startswith(".") and TEMP_MARK in name


def remove_stale_temps(folder: str | Path, recursive: bool = False) -> int:
    """Delete temp files in ``folder`` left by this process or by one that is gone; returns how many.

    Call it only when this process is not writing into ``folder``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.rglob(".*") if recursive else folder.glob(".*"):
        if not is_temp(p):
            continue
        try:
            pid = int(p.name.rsplit(TEMP_MARK, 1)[1])
        except ValueError:
            continue
        if pid == os.getpid() or not pid_alive(pid):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, then deliver them to the handlers in place before.

    A Python handler (not a signal mask) does the holding: a mask covers one thread only, and the
    kernel may hand a process signal to any of torch's worker threads.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {s: signal.signal(s, lambda signum, _frame: pending.append(signum)) for s in _HELD_SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)


def _fill(tmp: Path, write: Callable[[IO[bytes]], Any], fsync: bool = True) -> None:
    """Create ``tmp``, let ``write`` fill it, flush and fsync it (the one place bytes reach a disk)."""
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any], fsync: bool = True) -> Path:
    """Write ``path`` atomically: ``write(fh)`` fills a temp file beside it, which then replaces ``path``.

    ``fsync=False`` (bulk image writers) keeps the rename's all-or-nothing guarantee but skips the
    flush to the device, so after a power cut the file may be missing, never partial.
    """
    return atomic_write_many({path: write}, fsync=fsync)[0]


def atomic_write_many(writers: Mapping[str | Path, Callable[[IO[bytes]], Any]], fsync: bool = True) -> list[Path]:
    """Write several files as one step: every temp file is complete before the first rename.

    If any write fails, every temp file is removed and no final name changes (e.g. an export's
    weights never get replaced without its JSON).
    """
    items = [(Path(p), w) for p, w in writers.items()]
    done: list[Path] = []
    with _signals_held():
        try:
            for path, write in items:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise WriteError.from_os(path.parent, exc) from None
                tmp = temp_path(path)
                done.append(tmp)
                try:
                    _fill(tmp, write, fsync)
                except OSError as exc:
                    raise WriteError.from_os(path, exc) from None
            for path, _ in items:
                try:
                    os.replace(temp_path(path), path)
                except OSError as exc:
                    raise WriteError.from_os(path, exc) from None
        finally:
            for tmp in done:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
        if fsync:
            for folder in dict.fromkeys(p.parent for p, _ in items):
                fsync_dir(folder)
    return [p for p, _ in items]


def _bytes_writer(data: bytes) -> Callable[[IO[bytes]], Any]:
    return lambda fh: fh.write(data)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, _bytes_writer(data))


def write_files(contents: Mapping[str | Path, bytes]) -> list[Path]:
    """Write several files of bytes atomically as one step (see `atomic_write_many`)."""
    return atomic_write_many({p: _bytes_writer(d) for p, d in contents.items()})


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (newlines as given)."""
    return write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any, indent: int | None = 2, sort_keys: bool = False) -> str:
    """``obj`` as JSON text with a final newline."""
    return json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n"


def write_json(path: str | Path, obj: Any, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return write_text(path, json_text(obj, indent, sort_keys))


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV document (``\\n`` line ends) with ``header`` and ``rows``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Write a CSV file atomically."""
    return write_text(path, csv_text(header, rows))


def torch_save(obj: Any, path: str | Path) -> Path:
    """`torch.save` ``obj`` to ``path`` atomically."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


def safetensors_bytes(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> bytes:
    """A safetensors file whose bytes depend only on the tensors and metadata (keys sorted).

    The safetensors library writes ``__metadata__`` in hash-map order, which changes from process
    to process; the header is rewritten here as sorted, compact JSON (still a valid file).
    """
    from safetensors.torch import save

    raw = save(dict(tensors), metadata=dict(metadata) if metadata else None)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


def write_safetensors(path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> str:
    """Write tensors as a reproducible safetensors file atomically; returns the file's sha256 (hex)."""
    data = safetensors_bytes(tensors, metadata)
    write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def utc_timestamp() -> str:
    """Now, UTC, to the second (ISO 8601): the time every record ratlip writes carries."""
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
