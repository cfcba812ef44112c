"""Parsing of list-valued command options (`--hidden 0,4,8`, `--seeds 0,1,2`, `--batch-sizes 1,8`)."""

from __future__ import annotations

from ratlip_cli.errors import RatlipError


def parse_int_list(text: str, option: str, minimum: int = 0) -> list[int]:
    """'0,4,8' -> [0, 4, 8]: integers >= `minimum`, no duplicates, at least one (one rule for every option)."""
    values: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise RatlipError(f"{option} expects comma-separated integers (e.g. 0,4,8), got '{text}'") from None
        if value < minimum:
            raise RatlipError(f"{option} values must be >= {minimum}, got {value}")
        if value in values:
            raise RatlipError(f"{option} lists {value} twice")
        values.append(value)
    if not values:
        raise RatlipError(f"{option} needs at least one value")
    return values
