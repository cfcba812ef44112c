"""CI runs what the README tells a new user to run, in a fresh virtual environment."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    setup = [line for block in blocks[:2] for line in block.splitlines() if line and not line.startswith("#")]
    return setup


def test_ci_runs_the_readme_test_command_in_a_fresh_venv():
    install_and_test = _readme_commands()[1]
    assert install_and_test.startswith("pip install") and "pytest" in install_and_test
    ci = (ROOT / ".ci" / "run").read_text()
    ci_lines = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert install_and_test in ci_lines, "README's second command must appear verbatim in .ci/run"
    venv_line = next(i for i, line in enumerate(ci_lines) if "-m venv" in line)
    activate = next(i for i, line in enumerate(ci_lines) if "activate" in line)
    assert venv_line < activate < ci_lines.index(install_and_test)
    assert "mktemp" in ci, "the environment must be new on every run"


def test_readme_first_command_installs_the_same_extras_as_ci():
    first, second = _readme_commands()[:2]
    assert first.split("&&")[0].strip() == second.split("&&")[0].strip()
