"""The GALIP family (arXiv 2301.12959): the RATLIP networks, step and export without the RAT bridge.

GALIP shares every network file with RATLIP; what tells them apart is read from the config by the
network code (`model.family`, `model.rat.hidden`). This package only names the family.
"""

from __future__ import annotations

from ratlip_cli.models.ratlip import RatlipFamily


class GalipFamily(RatlipFamily):
    """GALIP: CLIP-based generator and discriminator (the RATLIP code path without RAT)."""

    name = "galip"
    summary = "GALIP: generative adversarial CLIPs (arXiv 2301.12959), RATLIP's baseline"

    own_settings_why = "GALIP has no RAT"

    def own_settings(self, cfg) -> dict:
        """GALIP has no RAT: model.rat.hidden = 0 (implied over a RATLIP preset's 64; an explicit 64 is refused)."""
        return {"model.rat.hidden": 0}


FAMILY = GalipFamily()
