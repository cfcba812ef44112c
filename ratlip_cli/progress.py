"""The one progress-bar factory of ratlip: a Rich bar with a label, count, times and extra fields."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ratlip_cli.console import console, err_console


def progress_bar(
    label: str = "{task.description}",
    *,
    extra: Sequence[str] = (),
    elapsed: bool = False,
    remaining: bool = True,
    stderr: bool = False,
    enabled: Optional[bool] = None,
    transient: bool = False,
) -> Progress:
    """A bar `label | bar | done/total | [elapsed] [remaining] | extra...` (extra: Rich format strings).

    On stderr when ``stderr`` (commands whose stdout is data, e.g. `--json`); shown only on a
    terminal unless ``enabled`` says otherwise.
    """
    out = err_console if stderr else console
    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
    columns += [TimeElapsedColumn()] if elapsed else []
    columns += [TimeRemainingColumn()] if remaining else []
    columns += [TextColumn(text) for text in extra]
    show = out.is_terminal if enabled is None else enabled
    return Progress(*columns, console=out, disable=not show, transient=transient)


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Progress]:
    """Rich progress bars on stderr (stdout stays clean for --json): `ratlip eval`, CLIP pretraining."""
    bars = progress_bar(elapsed=True, stderr=True, enabled=enabled)
    with bars:
        yield bars
