"""Shared Rich consoles: library code logs through these, never through print."""

from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def warn(message: str) -> None:
    """Print a one-line warning to stderr (the message as written: brackets are not markup)."""
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def notice(message: str) -> None:
    """Print a one-line notice (information the user should see once, not a problem) to stderr."""
    err_console.print(f"[cyan]notice:[/cyan] {escape(message)}", highlight=False, soft_wrap=True)
