"""`ratlip gradcam` and `ratlip ablate --gradcam`: Grad-CAM heat maps over generated images (the
paper's Figure 3) and, on `shapes`, the share of the map's mass inside the generated object.

One figure: a row per run (or ablation cell), a column pair per caption (the image, then the image
with its heat map over it). Every row generates caption j from the same noise (`seeds.caption_noise`
with the figure's seed, caption index j), so rows differ only in their generator; every map is
explained by one and the same evaluator, the first run's evaluation CLIP (`metrics.gradcam`), or,
with `eval.gradcam_target: discriminator`, by each run's own discriminator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ratlip_cli.config import Config
from ratlip_cli.console import console, warn
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import atomic_write
from ratlip_cli.metrics.gradcam import (
    clip_gradcam,
    normalise_maps,
    object_share,
    upsample_maps,
)
from ratlip_cli.seeds import caption_noise


@dataclass
class GradcamRow:
    """One row of the figure: its label, the generated images (uint8 HWC) and their Grad-CAM maps
    (H, W; unnormalised, each scaled to its maximum when drawn)."""

    label: str
    images: list[np.ndarray]
    maps: list[np.ndarray]


@dataclass
class GradcamOptions:
    """What `ratlip gradcam` was asked for (the CLI only parses)."""

    runs: list[Path] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    out: Path = Path("gradcam.png")
    seed: int = 0
    device: str | None = None
    generator: str | None = None
    sets: list[str] = field(default_factory=list)


def generate_images(loaded, captions: Sequence[str], seed: int, batch_size: int = 16) -> list[np.ndarray]:
    """uint8 (H, W, 3) images of `loaded` (an exported generator) for `captions`, caption i from noise (seed, i)."""
    from ratlip_cli.evaluate.sources import to_hwc_arrays
    from ratlip_cli.export import noise_dim

    gen = loaded.generator.eval()
    out: list[np.ndarray] = []
    for start in range(0, len(captions), batch_size):
        caps = list(captions[start : start + batch_size])
        z = caption_noise(len(caps), noise_dim(loaded), seed, start).to(loaded.device)
        with torch.no_grad():
            out += to_hwc_arrays(gen(z, loaded.embed(caps)).float().clamp(-1, 1).cpu())
    return out


@dataclass
class Explainer:
    """Grad-CAM for one target (`eval.gradcam_target`): ``explain(images, captions)`` -> maps.

    `identity` names the judge (the evaluation CLIP, or the run whose discriminator it is); `note`
    is a warning that must go with its maps ("" when none); `per_run` says the judge is the run's own
    (the discriminator) and must be rebuilt for every run.
    """

    target: str
    identity: str
    maps_of: Callable[[list[np.ndarray], list[str]], torch.Tensor]
    per_run: bool = False
    note: str = ""
    layer: str = ""

    @property
    def protocol(self) -> str:
        """What made the maps, as the ablation CSV's `gradcam_protocol` records it."""
        if self.per_run:
            return f"{self.target} (each run's own, latest checkpoint)"
        return f"{self.target} {self.layer}: {self.identity}"

    def explain(self, images: Sequence[np.ndarray], captions: Sequence[str], batch_size: int = 16) -> list[np.ndarray]:
        """Unnormalised (H, W) float maps of uint8 (H, W, 3) `images` for their `captions`, at each image's size."""
        if len(images) != len(captions):
            raise RatlipError(f"Grad-CAM: {len(images)} images but {len(captions)} captions")
        maps: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            imgs = list(images[start : start + batch_size])
            grid = self.maps_of(imgs, list(captions[start : start + batch_size]))
            maps += list(upsample_maps(grid, imgs[0].shape[:2]).numpy())
        return maps


def clip_explainer(cfg: Config, device: torch.device | str, run_dir: Path | None = None) -> Explainer:
    """The evaluation CLIP of `cfg` (as `ratlip eval` loads it for `run_dir`) at `eval.gradcam_block`."""
    from ratlip_cli.evaluate import eval_clip

    scorer = eval_clip(cfg, device, run_dir)
    block = cfg.eval.gradcam_block
    return Explainer("clip", scorer.identity, lambda imgs, caps: clip_gradcam(scorer, imgs, caps, block),
                     note=scorer.note, layer=f"block {block}")


def discriminator_explainer(run_dir: Path, device: torch.device | str) -> Explainer:
    """The run's own discriminator and condition head from its newest checkpoint (family ratlip or galip)."""
    from ratlip_cli.config import from_dict
    from ratlip_cli.metrics.gradcam import discriminator_gradcam
    from ratlip_cli.clip_pretrain import ensure_in_domain_clip
    from ratlip_cli.models.family import RunFiles
    from ratlip_cli.models.trainable import load_trainable_state_dict
    from ratlip_cli.models.registry import get_family
    from ratlip_cli.train.checkpoint import latest_checkpoint

    path, state = latest_checkpoint(Path(run_dir) / "checkpoints")
    if state is None:
        raise RatlipError(f"eval.gradcam_target=discriminator needs a checkpoint in {Path(run_dir) / 'checkpoints'}")
    cfg = from_dict(state["config"])
    if cfg.model.family not in ("ratlip", "galip"):
        raise RatlipError(f"eval.gradcam_target=discriminator is for families ratlip and galip, not {cfg.model.family}")
    family = get_family(cfg)
    files = RunFiles(Path(run_dir), resuming=True, main=False, seed=cfg.train.seed, in_domain_clip=ensure_in_domain_clip)
    text = family.text_encoder(cfg, files, device)
    nets = family.build(cfg, text)
    d, head = nets.trainable["discriminator"], nets.trainable["head"]
    load_trainable_state_dict(d, state["discriminator"])
    load_trainable_state_dict(head, state["head"])
    d.to(device).eval()
    head.to(device).eval()
    encoder = nets.text

    def maps_of(imgs: list[np.ndarray], caps: list[str]) -> torch.Tensor:
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
        with torch.no_grad():
            s = encoder.encode(encoder.tokenizer(caps).to(device))
        return discriminator_gradcam(d, head, x, s)

    return Explainer("discriminator", f"{Path(run_dir).name} {path.name}", maps_of, per_run=True, layer="D output grid")


def make_explainer(cfg: Config, device: torch.device | str, run_dir: Path) -> Explainer:
    """The explainer `cfg.eval.gradcam_target` names, for `run_dir`."""
    target = cfg.eval.gradcam_target
    if target == "clip":
        return clip_explainer(cfg, device, run_dir)
    if target == "discriminator":
        return discriminator_explainer(run_dir, device)
    raise RatlipError(f"unknown eval.gradcam_target '{target}'; choose clip or discriminator")


def shapes_object_share(images: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> dict[str, Any]:
    """Mean Grad-CAM mass inside the shapes checker's object (`data.shapes.object_mask`) and, as the
    control, the mean object share of the image, over the images where both exist.

    Returns {"share", "area", "n" (images counted), "skipped" (no object found or an all-zero map)};
    share and area are None when no image counts. A map that ignores the object scores its area on average.
    """
    from ratlip_cli.data.shapes import object_mask

    shares, areas, skipped = [], [], 0
    for image, map_ in zip(images, maps):
        mask = object_mask(image)
        share = object_share(map_, mask) if mask.any() else None
        if share is None:
            skipped += 1
            continue
        shares.append(share)
        areas.append(float(mask.mean()))
    return {
        "share": float(np.mean(shares)) if shares else None,
        "area": float(np.mean(areas)) if areas else None,
        "n": len(shares),
        "skipped": skipped,
    }


def overlay(image: np.ndarray, map_: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with a jet-coloured map (0..1) blended over it, uint8 (H, W, 3)."""
    from matplotlib import colormaps

    heat = colormaps["jet"](np.clip(map_, 0.0, 1.0))[..., :3] * 255.0
    return np.clip((1 - alpha) * image.astype(np.float64) + alpha * heat, 0, 255).astype(np.uint8)


def gradcam_figure(rows: Sequence[GradcamRow], captions: Sequence[str], path: Path, title: str = "") -> None:
    """The figure (Figure 3's layout): rows = runs or cells, columns = captions, image and overlay side by side."""
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows or not captions:
        raise RatlipError("the Grad-CAM figure needs at least one run and one caption")
    n_rows, n_cols = len(rows), 2 * len(captions)
    fig = Figure(figsize=(1.3 * n_cols + 1.2, 1.45 * n_rows + 0.9), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, row in enumerate(rows):
        for j, caption in enumerate(captions):
            img, heat = row.images[j], normalise_maps(torch.from_numpy(np.asarray(row.maps[j])[None]))[0].numpy()
            for k, picture in enumerate((img, overlay(img, heat))):
                ax = axes[i][2 * j + k]
                ax.imshow(picture, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    text = textwrap.fill(caption, 22) if k == 0 else "Grad-CAM"
                    ax.set_title(text, fontsize=6)
            if j == 0:
                axes[i][0].set_ylabel(row.label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: fig.savefig(fh, format="png"))


def figure_title(explainer: Explainer) -> str:
    """The figure's title: what the maps explain."""
    if explainer.target == "discriminator":
        return "Grad-CAM of each run's discriminator (conditional logit at its feature grid)"
    return f"Grad-CAM of the evaluation CLIP's image-caption cosine ({explainer.identity}), {explainer.layer}"


def with_eval_settings(cfg: Config, sets: Sequence[str]) -> Config:
    """A copy of a run's config with `--set eval.KEY=VALUE` overrides (the evaluation CLIP, the Grad-CAM target and block)."""
    import copy

    from ratlip_cli.config import parse_override, set_value

    cfg = copy.deepcopy(cfg)
    for text in sets:
        key, value = parse_override(text)
        if not key.startswith("eval."):
            raise RatlipError(f"--set {key}: ratlip gradcam takes eval.* keys only (the generator is the run's)")
        set_value(cfg, key, value)
    return cfg


def _run_label(loaded, run: Path) -> str:
    cfg = loaded.cfg
    return f"{run.name} (h={cfg.model.rat.hidden})" if cfg.model.family == "ratlip" else run.name


def run_gradcam(opts: GradcamOptions) -> Path:
    """`ratlip gradcam --run R ... CAPTION ...`: write the figure to `opts.out`; returns its path."""
    from ratlip_cli.dist import resolve_device
    from ratlip_cli.export import load_generator

    if not opts.runs:
        raise RatlipError("give at least one --run (a run folder with an export)")
    captions = [c.strip() for c in opts.captions if c.strip()]
    if not captions:
        raise RatlipError('give at least one caption, e.g. ratlip gradcam --run runs/NAME "a big red circle on a blue background"')
    if opts.labels and len(opts.labels) != len(opts.runs):
        raise RatlipError(f"--label given {len(opts.labels)} times for {len(opts.runs)} --run folders; give one per run or none")
    device = resolve_device(opts.device)
    rows: list[GradcamRow] = []
    explainer = None
    for k, run in enumerate(opts.runs):
        run = Path(run)
        loaded = load_generator(run, device, opts.generator)
        if explainer is None or explainer.per_run:
            explainer = make_explainer(with_eval_settings(loaded.cfg, opts.sets), device, run)
        images = generate_images(loaded, captions, opts.seed)
        rows.append(GradcamRow(opts.labels[k] if opts.labels else _run_label(loaded, run), images,
                               explainer.explain(images, captions)))
    title = figure_title(explainer)
    if explainer.note:
        warn(f"Grad-CAM maps from this evaluation CLIP: {explainer.note}")
    gradcam_figure(rows, captions, opts.out, title)
    console.print(f"wrote {opts.out} ({len(rows)} rows x {len(captions)} captions)", highlight=False)
    return Path(opts.out)
