"""The family table: each `model.family` name and the package under `ratlip_cli/models/` that implements it.

Adding a family is one entry in `FAMILIES`. The config builder (core, below the model packages) reads
the names from here and loads a family's package by name on first use, as a plugin, so it never
imports `ratlip_cli.models`; `ratlip_cli.models.registry.get_family` adds the type check.
"""

from __future__ import annotations

import importlib
from typing import Any

from ratlip_cli.errors import RatlipError

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


def load_family(name: str) -> Any:
    """The ``FAMILY`` object of the family called ``name`` (its package imported on first use)."""
    if name not in FAMILIES:
        raise RatlipError(f"unknown model.family '{name}'; choose one of: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name]).FAMILY
