"""Open the dataset a config names, generating the built-in shapes data first when it is missing."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from ratlip_cli import dist
from ratlip_cli.config import Config
from ratlip_cli.console import err_console


def ensure_dataset(cfg: Config):
    """The dataset at data.root (prepared or tar shards, per data.format); the built-in shapes data is
    generated there when missing."""
    from ratlip_cli.data.shards import open_dataset

    root = Path(cfg.data.root)
    if cfg.data.name == "shapes" and not (root / "manifest.json").is_file():
        if dist.is_main():
            from ratlip_cli.data import generate_shapes

            err_console.print(escape(f"generating the shapes dataset at {root} ({cfg.data.prepared_size} px) ..."),
                              highlight=False)  # stderr: `--json` output on stdout stays parseable
            fmt = "shards" if cfg.data.format == "shards" else "prepared"
            generate_shapes(root, size=cfg.data.prepared_size, fmt=fmt)
        dist.barrier()
    return open_dataset(root, cfg.data.format, cfg.data.shard_url)
