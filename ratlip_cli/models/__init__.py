"""The model families (no files, no CLI): one package per family, each owning its networks.

- `family.py`: the interface every family implements (`Family`, `Networks`, `TrainingStep`, ...);
- `registry.py`: `get_family(cfg)`, over the name table in `ratlip_cli/families.py`;
- `trainable.py`: the family-independent helpers for trainable weights (frozen backbones left out);
- `ratlip/` (RATLIP's networks, losses, step, release reader, Table II), `galip/`, `dmgan/`,
  `ecagan/`, `caegan/`; `common/`: parts several families share (CLIP wrapper and text encoder, ...).

RATLIP's and GALIP's networks: `ratlip_cli.models.ratlip.build.build_models(cfg, clip_model)`.
See docs/architecture.md for the data flow, the RAT design and parameter counts.
"""
