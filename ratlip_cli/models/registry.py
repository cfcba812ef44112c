"""`model.family` -> the family package that builds, trains, samples and exports it.

A family is a package under `ratlip_cli/models/` whose ``FAMILY`` object implements
`ratlip_cli.models.family.Family`; adding one is one entry in `FAMILIES` (`ratlip_cli/families.py`;
see docs/architecture.md, "How to add a model family"). Packages are imported on first use.
"""

from __future__ import annotations

from ratlip_cli.config import Config
from ratlip_cli.errors import RatlipError
from ratlip_cli.families import FAMILIES, family_names, load_family  # noqa: F401  (the table lives in core)
from ratlip_cli.models.family import Family


def get_family(which: str | Config) -> Family:
    """The `Family` of a name or of a config's `model.family`."""
    name = which.model.family if isinstance(which, Config) else str(which)
    family = load_family(name)
    if not isinstance(family, Family) or family.name != name:
        raise RatlipError(f"{FAMILIES[name]} does not define FAMILY for model.family '{name}'")
    return family
