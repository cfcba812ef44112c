"""RATLIP's and GALIP's parameter accounting (Table II) and the authors' released counts.

The frozen CLIP backbone is left out of the trainable counts (`ratlip_cli.models.trainable`).

The parameter table of docs/architecture.md is rerun with::

    python -m ratlip_cli.models.ratlip.params --preset cub --hidden 0,4,8,16,32,64,128

(`clip.weights` defaults to `random` here: counting needs no real weights.)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ratlip_cli.errors import RatlipError
from ratlip_cli.models.ratlip.attention import ShuffleAttention
from ratlip_cli.models.trainable import (  # noqa: F401  (re-exported: the helpers lived here)
    load_trainable_state_dict,
    set_trainable,
    trainable_parameters,
    trainable_state_dict,
)

PAPER_HIDDENS = (0, 4, 8, 16, 32, 64, 128)
RELEASE_PARAMS = Path(__file__).resolve().parent / "release_params.json"


def release_param_counts() -> dict[str, Any]:
    """Trainable parameter counts of the authors' released networks at full size (cfg/birds.yml).

    Computed by tools/make_reference_fixtures.py from the reference code itself (GALIP's NetG, NetD,
    NetC; RATLIP's NetG at every h of the sweep); tests/test_reference.py checks that ratlip's
    galip family and `model.rat.mode: authors` networks have exactly these counts.
    """
    return json.loads(RELEASE_PARAMS.read_text(encoding="utf-8"))


def release_row(family: str, h: int) -> dict[str, int | None]:
    """The release's generator / discriminator (all and used) / head counts matching (family, h); None where none exists."""
    counts = release_param_counts()
    if family == "galip":
        g = counts["galip"]["netG"] if h == 0 else None
        d = counts["galip"]
    else:
        g = counts["ratlip"].get(str(h), {}).get("netG")
        d = counts["ratlip_d"]
    return {"release_generator": g, "release_discriminator": d["netD"], "release_discriminator_used": d["netD_used"],
            "release_head": d["netC"]}


def _count(modules: Iterable[nn.Module], exclude: set[int]) -> int:
    seen: set[int] = set()
    total = 0
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen and id(p) not in exclude:
                seen.add(id(p))
                total += p.numel()
    return total


def param_counts(models: Any) -> dict[str, dict[str, int]]:
    """Trainable and frozen parameter counts per part of a `RatlipModels`.

    Keys: bridge (fc, RAT blocks, CLIP-width convs, prompts and the RAT recurrence), rat (the
    recurrence alone: LSTM(s) and initial-state maps; part of bridge), shuffle_attention (the
    generator's shuffle attention layers, in bridge and blocks; 0 with model.shuffle_attention false
    and for galip), clip_mapper (the frozen CLIP
    image tower the generator runs), generator_blocks (with to_rgb), generator, discriminator, head,
    clip (the whole frozen CLIP model), total. Each maps to {"trainable", "frozen", "total"}.
    """
    backbone = models.backbone
    clip_ids = {id(p) for p in backbone.parameters()}
    visual = sum(p.numel() for p in backbone.visual.parameters())
    clip_all = sum(p.numel() for p in backbone.parameters())
    g = models.generator
    parts = g.part_modules()
    d_frozen = visual if models.discriminator.kind == "clip" else 0

    def row(trainable: int, frozen: int) -> dict[str, int]:
        return {"trainable": trainable, "frozen": frozen, "total": trainable + frozen}

    counts = {
        "bridge": row(_count(parts["bridge"], clip_ids), 0),
        "rat": row(_count(parts["rat"], clip_ids), 0),
        "shuffle_attention": row(_count([m for m in g.modules() if isinstance(m, ShuffleAttention)], clip_ids), 0),
        "clip_mapper": row(0, visual),
        "generator_blocks": row(_count(parts["generator_blocks"], clip_ids), 0),
        "generator": row(_count([g], clip_ids), visual),
        "discriminator": row(_count([models.discriminator], clip_ids), d_frozen),
        "head": row(_count([models.head], clip_ids), 0),
        "clip": row(0, clip_all),
    }
    trainable = _count([g, models.discriminator, models.head], clip_ids)
    counts["total"] = row(trainable, clip_all)
    return counts


def param_table(
    cfg: Any, clip_model: nn.Module, hiddens: Sequence[int] = PAPER_HIDDENS, with_release: bool = False
) -> list[dict[str, int]]:
    """One row of parameter counts per RAT hidden size h (the rest of `cfg` unchanged).

    With `with_release`, each row also has ``authors_generator`` (ours with model.rat.mode=authors)
    and the release's counts (`release_row`; None where the release has no such network).
    """
    from ratlip_cli.models.ratlip.build import build_models

    rows = []
    for h in hiddens:
        c = copy.deepcopy(cfg)
        c.model.rat.hidden = int(h)
        counts = param_counts(build_models(c, clip_model))
        extra: dict[str, Any] = {}
        if with_release:
            if c.model.rat.mode == "authors" or h == 0:
                extra["authors_generator"] = counts["generator"]["trainable"]
            else:
                a = copy.deepcopy(c)
                a.model.rat.mode = "authors"
                extra["authors_generator"] = param_counts(build_models(a, clip_model))["generator"]["trainable"]
            extra.update(release_row(c.model.family, int(h)))
        rows.append(
            {
                "h": int(h),
                "bridge": counts["bridge"]["trainable"],
                "rat": counts["rat"]["trainable"],
                "shuffle_attention": counts["shuffle_attention"]["trainable"],
                "generator_blocks": counts["generator_blocks"]["trainable"],
                "generator": counts["generator"]["trainable"],
                "discriminator": counts["discriminator"]["trainable"],
                "head": counts["head"]["trainable"],
                "trainable": counts["total"]["trainable"],
                "frozen": counts["total"]["frozen"],
                "total": counts["total"]["total"],
                **extra,
            }
        )
    return rows


TABLE_COLUMNS = (
    ("h", "h"),
    ("bridge", "G bridge"),
    ("rat", "of which RAT LSTM"),
    ("generator_blocks", "G blocks"),
    ("generator", "G trainable"),
    ("shuffle_attention", "of which SA"),
    ("discriminator", "D"),
    ("head", "head"),
    ("trainable", "trainable (G+D+head)"),
    ("frozen", "frozen CLIP"),
    ("total", "total"),
)


def format_param_table(rows: Sequence[dict[str, int]]) -> str:
    """A Markdown table of `param_table` rows (counts with thousands separators)."""
    header = "| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"
    rule = "|" + "|".join("---:" for _ in TABLE_COLUMNS) + "|"
    lines = [header, rule]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[key]:,}" if key != "h" else str(r[key]) for key, _ in TABLE_COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the parameter table for a preset (see the module docstring)."""
    from ratlip_cli.config import resolve_config
    from ratlip_cli.weights import load_clip

    parser = argparse.ArgumentParser(
        prog="python -m ratlip_cli.models.ratlip.params",
        description="Trainable and frozen parameter counts of the RATLIP networks for several RAT hidden sizes.",
    )
    parser.add_argument("--preset", default="cub", help="config preset (default: cub, the paper configuration)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable"
    )
    parser.add_argument(
        "--hidden", default=",".join(map(str, PAPER_HIDDENS)), help="comma-separated RAT hidden sizes h (default: %(default)s)"
    )
    parser.add_argument(
        "--clip-weights", default="random", help="clip.weights to build CLIP with (default: random; counts do not depend on it)"
    )
    args = parser.parse_args(argv)
    try:
        hiddens = [int(h) for h in args.hidden.split(",") if h.strip()]
        cfg = resolve_config(args.preset, overrides=[f"clip.weights={args.clip_weights}", *args.overrides])
        clip_model, _ = load_clip(cfg.clip.arch, cfg.clip.weights, cfg.clip.cache_dir)
        rows = param_table(cfg, clip_model, hiddens)
    except (RatlipError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    m = cfg.model
    sys.stdout.write(
        f"preset {args.preset}: clip.arch={cfg.clip.arch}, image_size={m.image_size}, ngf={m.ngf}, "
        f"rat.mode={m.rat.mode}, rat.scope={m.rat.scope}, d_backbone={m.d_backbone}\n\n"
    )
    sys.stdout.write(format_param_table(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
