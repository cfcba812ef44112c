"""Shared Rich consoles: library code logs through these, never through print."""

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def warn(message: str) -> None:
    """Print a one-line warning to stderr."""
    err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)
