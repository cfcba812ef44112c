"""Datasets: `ratlip prepare` for the standard layouts, the prepared format, shapes, and the training dataset.

Names are imported lazily so that `ratlip --help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

# Raw layouts `ratlip prepare` understands (the CLI's choices) and the preset named after each.
KINDS = ("cub", "oxford", "celeba-tiny", "coco", "folder", "webdataset", "shapes")

_EXPORTS = {
    "load_prepared": "prepared",
    "PreparedDataset": "prepared",
    "PrepareSummary": "prepared",
    "write_prepared": "prepared",
    "prepare_dataset": "prepare",
    "TextImageDataset": "dataset",
    "load_shards": "shards",
    "ShardSet": "shards",
    "write_shards": "shards",
    "ShardStream": "stream",
    "generate_shapes": "prepare",
    "check_shapes": "shapes",
    "score_shapes": "shapes",
    "analyse_shapes": "shapes",
    "parse_shapes_caption": "shapes",
    "render_spec": "shapes",
}

__all__ = ["KINDS", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"ratlip_cli.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ratlip_cli.data' has no attribute {name!r}")
