"""The import layers of ratlip_cli (pyproject.toml's [tool.importlinter] contracts), checked by `lint-imports`.

cli -> commands -> harness (train, evaluate) -> model families -> metrics, data -> core: every import
runs downhill, nothing under `ratlip_cli.models` imports the harness, the commands or the command line,
and no two parts of a package import each other in a circle. A second test proves the same checker
fails on a small package that breaks each rule.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`lint-imports` from this interpreter's environment, on the package found first on PYTHONPATH=cwd."""
    exe = Path(sys.executable).with_name("lint-imports")
    command = [str(exe)] if exe.is_file() else [shutil.which("lint-imports") or "lint-imports"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([*command, "--no-cache", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_package_keeps_its_layers_and_has_no_circles():
    result = _lint_imports(ROOT)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "3 kept, 0 broken" in out
    for contract in ("layers", "models-below-harness", "no-circles"):  # each contract is really checked
        assert _lint_imports(ROOT, "--contract", contract).returncode == 0


def test_every_part_of_the_package_stands_in_a_layer():
    """A module or package of ratlip_cli/ left out of the layers would escape the contract."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["id"] == "layers")["layers"]
    listed = {part.strip() for line in layers for part in line.replace(":", "|").split("|")}
    package = ROOT / "ratlip_cli"
    parts = {f"ratlip_cli.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    parts |= {f"ratlip_cli.{p.parent.name}" for p in package.glob("*/__init__.py")}
    assert len(parts) > 30
    assert parts - listed == set()
    assert listed - parts == set()  # and every name in the layers exists


def test_the_contracts_catch_an_upward_import_and_a_circle(tmp_path):
    pkg = tmp_path / "layered"
    (pkg / "models").mkdir(parents=True)
    for name in ("__init__.py", "models/__init__.py", "core.py", "cli.py"):
        (pkg / name).write_text("", encoding="utf-8")
    (pkg / "harness.py").write_text("from layered import models\n", encoding="utf-8")
    (pkg / "models" / "net.py").write_text("from layered import harness\n", encoding="utf-8")  # upward
    (pkg / "core.py").write_text("from layered import config\n", encoding="utf-8")  # core <-> config
    (pkg / "config.py").write_text("from layered import core\n", encoding="utf-8")
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_package = layered\n\n"
        "[importlinter:contract:layers]\nname = layers\ntype = layers\n"
        "layers =\n    layered.cli\n    layered.harness\n    layered.models\n    layered.config : layered.core\n\n"
        "[importlinter:contract:models-below-harness]\nname = models\ntype = forbidden\n"
        "source_modules = layered.models\nforbidden_modules = layered.harness\n\n"
        "[importlinter:contract:no-circles]\nname = circles\ntype = acyclic_siblings\nancestors = layered\n",
        encoding="utf-8",
    )
    result = _lint_imports(tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "0 kept, 3 broken" in out, out
    assert "layered.models.net -> layered.harness" in out
