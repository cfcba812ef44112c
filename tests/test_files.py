"""ratlip_cli.files: the one atomic writer (temp file, fsync, rename), its failure modes and wrappers."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys

import pytest
import torch

from ratlip_cli import files
from ratlip_cli.errors import RatlipError


def _enospc_after(monkeypatch, nbytes: int, match: str = ""):
    """Make `files._fill` write ``nbytes`` of the content and then fail with ENOSPC (for paths containing ``match``)."""
    real = files._fill

    def fill(tmp, write, fsync=True):
        if match not in tmp.name:
            return real(tmp, write, fsync)

        class Full:
            def __init__(self, fh):
                self.fh, self.left = fh, nbytes

            def write(self, data):
                data = bytes(data)
                if len(data) > self.left:
                    self.fh.write(data[: self.left])
                    raise OSError(errno.ENOSPC, "No space left on device")
                self.left -= len(data)
                return self.fh.write(data)

            def __getattr__(self, name):
                return getattr(self.fh, name)

        return real(tmp, lambda fh: write(Full(fh)), fsync)

    monkeypatch.setattr(files, "_fill", fill)


def test_write_replaces_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    files.write_text(path, "one\n")
    files.write_text(path, "two\n")
    assert path.read_text() == "two\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


def test_enospc_keeps_the_old_file_and_says_why(tmp_path, monkeypatch):
    path = tmp_path / "a.bin"
    files.write_bytes(path, b"old content")
    _enospc_after(monkeypatch, 3)
    with pytest.raises(files.WriteError, match="No space left on device; free some space") as info:
        files.write_bytes(path, b"new content that does not fit")
    assert isinstance(info.value, RatlipError) and info.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_write_files_is_all_or_nothing(tmp_path, monkeypatch):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.json"
    files.write_files({a: b"A1", b: b"B1"})
    _enospc_after(monkeypatch, 0, match="b.json")
    with pytest.raises(files.WriteError):
        files.write_files({a: b"A2", b: b"B2"})
    assert (a.read_bytes(), b.read_bytes()) == (b"A1", b"B1")  # a's new temp was complete but never renamed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.json"]


def test_unwritable_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(files.WriteError, match=r"cannot write .*file"):
        files.write_text(tmp_path / "file" / "inside.txt", "x")


def test_wrappers_round_trip(tmp_path):
    files.write_json(tmp_path / "a.json", {"b": 1, "a": [2]}, sort_keys=True)
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": [2], "b": 1}
    files.write_csv(tmp_path / "a.csv", ["x", "y"], [[1, "a,b"]])
    assert (tmp_path / "a.csv").read_text() == 'x,y\n1,"a,b"\n'
    files.torch_save({"t": torch.arange(3)}, tmp_path / "a.pt")
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["t"], torch.arange(3))


def test_safetensors_bytes_are_canonical_and_loadable(tmp_path):
    from safetensors.torch import load_file

    tensors = {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.ones(3)}
    one = files.safetensors_bytes(tensors, {"step": "5", "format": "x", "a": "y"})
    two = files.safetensors_bytes(dict(reversed(list(tensors.items()))), {"a": "y", "format": "x", "step": "5"})
    assert one == two
    (n,) = struct.unpack("<Q", one[:8])
    header = one[8 : 8 + n].decode()
    assert n % 8 == 0 and list(json.loads(header)["__metadata__"]) == ["a", "format", "step"]
    sha = files.write_safetensors(tmp_path / "t.safetensors", tensors, {"step": "5"})
    assert sha == hashlib.sha256((tmp_path / "t.safetensors").read_bytes()).hexdigest()
    assert sha == files.sha256_file(tmp_path / "t.safetensors")
    back = load_file(str(tmp_path / "t.safetensors"))
    assert torch.equal(back["w"], tensors["w"]) and torch.equal(back["b"], tensors["b"])


def test_safetensors_bytes_identical_across_processes():
    """The metadata order of the safetensors library varies per process; ours does not."""
    code = (  # the library orders the metadata by a per-process hash seed; ours must not depend on it
        "import hashlib, torch; from ratlip_cli.files import safetensors_bytes; "
        "print(hashlib.sha256(safetensors_bytes({'a': torch.zeros(2)}, "
        "{k: str(i) for i, k in enumerate('abcdefghij')})).hexdigest())"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
            for _ in range(2)}
    assert len(outs) == 1


def test_stale_temps_removed_only_for_dead_writers(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".a.pt{files.TEMP_MARK}{dead.pid}").write_bytes(b"x")
    (tmp_path / f".b.pt{files.TEMP_MARK}1").write_bytes(b"x")  # pid 1 is alive (init)
    (tmp_path / "keep.pt").write_bytes(b"x")
    assert files.remove_stale_temps(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".b.pt{files.TEMP_MARK}1", "keep.pt"]


def test_sigterm_during_a_write_waits_for_the_rename(tmp_path):
    """A SIGTERM arriving mid-write is delivered only after the file is complete under its name."""
    path = tmp_path / "big.bin"
    seen = []

    def slow(fh):
        os.kill(os.getpid(), signal.SIGTERM)  # pending: held until the write is done
        seen.append(path.exists())
        fh.write(b"x" * 1000)

    old = signal.signal(signal.SIGTERM, lambda *a: seen.append(path.read_bytes()))
    try:
        files.atomic_write(path, slow)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert seen == [False, b"x" * 1000]
