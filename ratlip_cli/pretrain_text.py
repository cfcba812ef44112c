"""What `ratlip pretrain-text` does with its options: the DAMSM pretraining of the dmgan family's text encoder."""

from __future__ import annotations

from pathlib import Path

from ratlip_cli.config import resolve_config, to_yaml
from ratlip_cli.console import console

# The family whose separately pretrained text encoder this command trains.
TEXT_FAMILY = "dmgan"


def run_pretrain_text_command(preset: str | None, config: Path | None, sets: list[str] | None, device: str | None,
                              out: Path | None, restart: bool, print_config: bool) -> None:
    """Resolve the config (preset, --config, --set, --device, --out) and pretrain, or print the config."""
    from ratlip_cli.models.registry import get_family
    from ratlip_cli.train.command import DEFAULT_PRESET

    extra = list(sets or [])
    if device:
        extra.append(f"train.device={device}")
    if out is not None:
        extra.append(f"damsm.out={out}")
    cfg = resolve_config(preset or DEFAULT_PRESET, config, extra, recipe_of=(TEXT_FAMILY, "damsm."))
    if print_config:
        console.print(to_yaml(cfg), end="", highlight=False, markup=False)
        return
    get_family(TEXT_FAMILY).pretrain_text(cfg, restart=restart)
