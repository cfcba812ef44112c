"""One writer per run folder: `runs/NAME/train.lock` names the `ratlip train` process writing the run.

The lock is a POSIX record lock (`fcntl.lockf`) on ``train.lock``, which also holds the holder's
pid, host and start time as JSON. The kernel drops the record lock when its process dies, so a
SIGKILLed trainer never blocks its own `--resume`; the JSON is what a refused second trainer is
told, and what tells a taken-over lock from a clean one:

- lock held by a live process: the second trainer stops with a one-line error naming pid and host;
- file left by a dead process of this host (no record lock, dead pid): taken over with a warning;
- file left by a process on another host (its pid cannot be checked from here): refused, with the
  file to delete once no trainer runs there.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from ratlip_cli.console import warn
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import pid_alive, utc_timestamp

LOCK_FILE = "train.lock"


def _read(fd: int) -> dict[str, Any] | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 65536)
        doc = json.loads(data.decode("utf-8")) if data.strip() else None
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and "pid" in doc else None


def _who(doc: dict[str, Any]) -> str:
    since = f", since {doc['started']}" if doc.get("started") else ""
    return f"pid {doc.get('pid')} on host {doc.get('host')}{since}"


class RunLock:
    """The exclusive right of this process to write one run folder (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise a one-line RatlipError naming the holder; returns self."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RatlipError(f"cannot create the run folder {self.root}: {exc.strerror or exc}") from None
        host, me = socket.gethostname(), os.getpid()
        for _attempt in range(5):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise RatlipError(f"cannot create the run lock {self.path}: {exc.strerror or exc}") from None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read(fd) or {"pid": "?", "host": "?"}
                os.close(fd)
                raise RatlipError(
                    f"run folder {self.root} is being written by another `ratlip train` ({_who(holder)}); "
                    "wait for it to finish or stop it: two trainers writing one run would corrupt it"
                ) from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except OSError:
                same_file = False
            if not same_file:  # the holder released (deleted) it between our open and lock: try again
                os.close(fd)
                continue
            old = _read(fd)
            if old is not None and old.get("pid") != me:
                if old.get("host") != host:
                    os.close(fd)
                    raise RatlipError(
                        f"run folder {self.root} is locked by a `ratlip train` on another host ({_who(old)}); "
                        f"if no training of this run is running there any more, delete {self.path}"
                    )
                if pid_alive(int(old.get("pid", 0))):
                    os.close(fd)
                    raise RatlipError(
                        f"run folder {self.root} is locked by {_who(old)}, which is still running; stop it, or "
                        f"delete {self.path} if that process is not a `ratlip train` of this run"
                    )
                warn(f"taking over the stale lock of {self.root}: {_who(old)} is gone (it did not stop cleanly)")
            doc = {
                "pid": me,
                "host": host,
                "started": utc_timestamp(),
                "command": " ".join(sys.argv),
            }
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(doc) + "\n").encode("utf-8"))
            os.fsync(fd)
            self.fd = fd
            return self
        raise RatlipError(f"could not take the run lock {self.path}: it kept changing; try again")

    def release(self) -> None:
        """Delete the lock file and drop the lock (no-op when not held)."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
