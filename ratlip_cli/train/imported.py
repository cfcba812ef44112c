"""`ratlip import`: a released checkpoint of a family's authors as a run folder (config, export, step-0
checkpoint). The family reads the release into its networks (`Family.read_release`,
`Family.release_networks`); this harness module writes the run, as `ratlip train` would.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ratlip_cli import __version__
from ratlip_cli.config import Config, resolve_config, save_config, to_dict
from ratlip_cli.console import console, warn
from ratlip_cli.export import export_generator, save_clip_weights
from ratlip_cli.files import check_name
from ratlip_cli.models.family import Family, Networks
from ratlip_cli.models.registry import get_family
from ratlip_cli.rng import capture_rng
from ratlip_cli.seeds import derive_seed
from ratlip_cli.train.checkpoint import save_checkpoint
from ratlip_cli.train.ema import EmaGenerator
from ratlip_cli.train.run import claim_new_run
from ratlip_cli.weights import load_clip


def _initial_checkpoint(cfg: Config, nets: Networks) -> dict:
    """A step-0 training checkpoint of imported weights (fresh optimisers, EMA = the weights), in the
    layout `ratlip train --resume` reads: the family's training step writes its own part."""
    tc = cfg.train
    noise = torch.Generator().manual_seed(derive_seed(tc.seed, "noise", 0))
    step = get_family(cfg).training_step(cfg, nets, torch.device("cpu"), noise)
    ema = EmaGenerator(step.ema_source, tc.ema_halflife_kimg, tc.ema_rampup)
    return {
        "step": 0, "epoch": 0, "step_in_epoch": 0, "images": 0, "elapsed_s": 0.0,
        "world_size": 1, "batch_size": tc.batch_size,
        **step.state_dict(), "ema": ema.state_dict(),
        "rng": [capture_rng()], "noise_rng": [noise.get_state()],
        "log_acc": {}, "nonfinite_total": 0, "nonfinite_streak": 0,
        "config": to_dict(cfg), "package_version": __version__,
    }


def import_release_run(
    family: Family,
    path: str | Path,
    preset: str | None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    name: str | None = None,
) -> Path:
    """Turn a release checkpoint that ``family`` reads into a run folder; returns the folder.

    The settings the file implies (for GALIP/RATLIP: `model.family`, `model.rat.mode` and
    `model.rat.hidden`) come first; `--set` may still change any key, but the weights must then fit.
    """
    if name is not None:
        check_name(name, "--name")  # the run folder train.runs_dir/NAME
    release = family.read_release(Path(path))
    inferred = list(release.settings)
    if name:
        inferred.append(f"train.name={json.dumps(name)}")  # quoted: a name such as 007 or yes stays a string
    cfg = resolve_config(preset, config_file, [*inferred, *(overrides or [])])
    paths, lock = claim_new_run(cfg)  # one writer per run folder, as `ratlip train`
    try:
        clip_model, _ = load_clip(cfg.clip.arch, cfg.clip.weights, cfg.clip.cache_dir)
        nets, clip_matches = family.release_networks(cfg, clip_model, release)
        if not clip_matches:
            warn(
                f"the CLIP image tower stored in {Path(path).name} differs from clip.weights={cfg.clip.weights}: "
                "the generator's mapper will not behave as trained (pass the CLIP the release used, OpenAI ViT-B/32)"
            )
        paths.make()
        clip_file = None
        if cfg.clip.weights == "random":
            clip_file = paths.clip
            save_clip_weights(clip_model, clip_file)
        save_config(cfg, paths.config)
        # The release keeps no EMA: both exported generators are the released weights.
        export_generator(nets.generator, cfg, paths.export, clip_file=clip_file, raw=nets.generator)
        save_checkpoint(_initial_checkpoint(cfg, nets), paths.checkpoints, cfg.train.keep_checkpoints)
        console.print(
            f"imported {Path(path).name} ({release.description}) into {paths.root}: `ratlip sample --run {paths.root} ...`, "
            f"`ratlip eval --run {paths.root}`, `ratlip train --resume {paths.root}`",
            highlight=False,
        )
    finally:
        lock.release()
        if paths.root.is_dir() and not any(paths.root.iterdir()):  # a refused import leaves no run folder
            paths.root.rmdir()
    return paths.root
