"""`model.family` -> the family package that builds, trains, samples and exports it.

A family is a package under `ratlip_cli/models/` whose ``FAMILY`` object implements
`ratlip_cli.models.family.Family`; adding one is one entry in `FAMILIES` (see docs/architecture.md,
"How to add a model family"). Packages are imported on first use.
"""

from __future__ import annotations

import importlib

from ratlip_cli.config import Config
from ratlip_cli.errors import RatlipError
from ratlip_cli.models.family import Family

# family name -> package holding FAMILY
FAMILIES: dict[str, str] = {
    "ratlip": "ratlip_cli.models.ratlip",
    "galip": "ratlip_cli.models.galip",
    "dmgan": "ratlip_cli.models.dmgan",
    "ecagan": "ratlip_cli.models.ecagan",
    "caegan": "ratlip_cli.models.caegan",
}


def family_names() -> tuple[str, ...]:
    """The registered `model.family` values."""
    return tuple(FAMILIES)


def get_family(which: str | Config) -> Family:
    """The `Family` of a name or of a config's `model.family`."""
    name = which.model.family if isinstance(which, Config) else str(which)
    if name not in FAMILIES:
        raise RatlipError(f"unknown model.family '{name}'; choose one of: {', '.join(FAMILIES)}")
    family = importlib.import_module(FAMILIES[name]).FAMILY
    if not isinstance(family, Family) or family.name != name:
        raise RatlipError(f"{FAMILIES[name]} does not define FAMILY for model.family '{name}'")
    return family
