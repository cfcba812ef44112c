"""An in-domain CLIP: the config's small open_clip model trained contrastively on a prepared dataset.

No pretrained CLIP exists offline, and a random CLIP gives the paper's CLIP-feature discriminator
and CLIP similarity loss nothing to work with. `ratlip pretrain-clip DATASET` trains `clip.arch` from
scratch on the dataset's training split with open_clip's own `ClipLoss` (AdamW, linear warm-up, cosine
decay; random horizontal flips; one random caption per image per step) and reports retrieval on the
held-out split. The result is an open_clip state dict in safetensors, which `clip.weights` accepts.

`clip.weights: in-domain` (the `shapes` preset) means "this file for data.root and clip.pretrain",
built on first use and cached under ``<data.root>/in-domain-clip/``.

Retrieval report (held-out split, all of each image's captions count as its own):
- ``i2t_top1``: the image's nearest caption (among all distinct captions of the split) is its own;
- ``t2i_top1``: a caption's nearest image (among all images of the split) has that caption;
- shapes only, attribute level: the nearest of the 108 canonical captions (every colour, shape,
  background and size in phrasing 0) names the image's colour / shape / background / size / all four.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ratlip_cli import dist
from ratlip_cli.config import ClipPretrainConfig, Config
from ratlip_cli.console import console, notice
from ratlip_cli.data.dataset import center_crop, resize_shorter_side
from ratlip_cli.data.ensure import ensure_dataset
from ratlip_cli.data.shapes import BACKGROUNDS, COLOURS, SHAPES, SIZES, caption_for, parse_shapes_caption
from ratlip_cli.data.split import read_split
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import torch_save, write_bytes, write_json
from ratlip_cli.models.common.clip_backbone import OPENAI_MEAN, OPENAI_STD
from ratlip_cli.optim import adamw
from ratlip_cli.profiling import tune_cpu_allocator
from ratlip_cli.progress import progress_bars
from ratlip_cli.seeds import derive_seed
from ratlip_cli.weights import IN_DOMAIN, clip_image_size, load_clip, save_clip_weights  # noqa: F401  (IN_DOMAIN re-exported)

CACHE_FOLDER = "in-domain-clip"
CKPT_FORMAT = "ratlip-clip-pretrain"


@dataclass
class PretrainReport:
    """What a pretraining produced: the weights file and held-out retrieval rates (0..1)."""

    weights: str
    arch: str
    dataset: str
    steps: int
    images_seen: int
    seconds: float
    retrieval: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    # The content fingerprints (`data.split.read_split`) of the train and test splits it saw.
    fingerprints: dict[str, str] = field(default_factory=dict)


def settings_key(arch: str, pcfg: ClipPretrainConfig, data_name: str, image_size: int) -> str:
    """A short hash of everything that decides the pretrained weights (names the cached file)."""
    decisive = {k: v for k, v in asdict(pcfg).items() if k != "checkpoint_every"}
    text = json.dumps({"arch": arch, "data": data_name, "image_size": image_size, **decisive}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def in_domain_clip_path(cfg: Config) -> Path:
    """Where the in-domain CLIP for this config is cached: ``<data.root>/in-domain-clip/<arch>-<key>.safetensors``."""
    key = settings_key(cfg.clip.arch, cfg.clip.pretrain, cfg.data.name, cfg.data.prepared_size)
    return Path(cfg.data.root) / CACHE_FOLDER / f"{cfg.clip.arch}-{key}.safetensors"


def in_domain_label(cfg: Config) -> str:
    """How metrics computed with this config's in-domain CLIP are labelled."""
    return f"in-domain CLIP ({cfg.data.name})"


SHIPPED_FOLDER = Path(__file__).parent / "assets" / CACHE_FOLDER


def shipped_in_domain_clip(cfg: Config) -> Path | None:
    """The in-domain CLIP shipped inside the package for exactly this config and dataset, if any.

    A shipped file is used only where it is the file `ratlip pretrain-clip` would build: the same
    settings key (arch, clip.pretrain, data name and size) and the same train and test content
    (the splits' fingerprints, recorded beside it). Anything else is pretrained as before.
    """
    name = in_domain_clip_path(cfg).name
    weights, record = SHIPPED_FOLDER / name, (SHIPPED_FOLDER / name).with_suffix(".json")
    if not (weights.is_file() and record.is_file()):
        return None
    wanted = json.loads(record.read_text(encoding="utf-8")).get("fingerprints", {})
    try:
        found = {split: read_split(cfg.data.root, split).fingerprint for split in ("train", "test")}
    except RatlipError:
        return None
    return weights if wanted and found == wanted else None


def _install_shipped(shipped: Path, path: Path) -> None:
    """Copy a shipped in-domain CLIP and its report into the dataset's cache (atomically)."""
    report = json.loads(shipped.with_suffix(".json").read_text(encoding="utf-8"))
    report["weights"] = str(path)
    write_bytes(path, shipped.read_bytes())
    write_json(path.with_suffix(".json"), report)


def ensure_in_domain_clip(cfg: Config, quiet: bool = False) -> Path:
    """The cached in-domain CLIP file for `cfg`: the one shipped with the package when it was built
    from this very dataset and these settings, else pretrained now (a few minutes on a CPU)."""
    path = in_domain_clip_path(cfg)
    if not path.is_file():
        shipped = None
        if dist.is_main():
            ensure_dataset(cfg)  # the shipped file is matched against the prepared dataset's content
            shipped = shipped_in_domain_clip(cfg)
        if shipped is not None:
            _install_shipped(shipped, path)
            if not quiet:
                notice(
                    f"clip.weights=in-domain: using the {cfg.clip.arch} CLIP shipped with ratlip, built from this "
                    f"dataset with these settings (`ratlip pretrain-clip {cfg.data.name}` rebuilds it); cached at {path}"
                )
        elif dist.is_main():
            if not quiet:
                console.print(
                    f"clip.weights=in-domain: pretraining {cfg.clip.arch} on {cfg.data.root} once "
                    f"(cached at {path}; `ratlip pretrain-clip` does this step alone)",
                    highlight=False,
                )
            pretrain_clip(cfg, out=path, work_dir=path.with_suffix(".work"))
        dist.barrier()
    return path


# ----------------------------------------------------------------------------- data in memory


class _Split:
    """A split held in memory: uint8 images (N, H, W, 3) at the CLIP image size and their captions
    (read through `read_split`, so the folder format and tar shards give the same arrays)."""

    def __init__(self, dataset, split: str, size: int) -> None:
        from PIL import Image

        part = read_split(dataset, split)
        self.keys: list[str] = part.keys
        self.captions: list[list[str]] = part.captions
        self.fingerprint: str = part.fingerprint
        if any(not c for c in self.captions):
            raise RatlipError(f"some images of split '{split}' in {part.root} have no caption")
        arrays = []
        for i in range(len(part)):
            img = center_crop(resize_shorter_side(part.open_image(i), size), size)
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            arrays.append(np.asarray(img, dtype=np.uint8))
        self.images = np.stack(arrays)


def _normalise(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - mean) / std


def _mean_std(model) -> tuple[torch.Tensor, torch.Tensor]:
    pcfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    mean = torch.tensor(pcfg.get("mean", OPENAI_MEAN)).view(1, 3, 1, 1)
    std = torch.tensor(pcfg.get("std", OPENAI_STD)).view(1, 3, 1, 1)
    return mean, std


# ----------------------------------------------------------------------------- retrieval


@torch.no_grad()
def retrieval_report(model, tokenizer, split: _Split, data_name: str, batch: int = 256) -> dict[str, float]:
    """Top-1 image->text and text->image retrieval on `split` (and attribute rates for shapes)."""
    model.eval()
    mean, std = _mean_std(model)
    img = torch.cat(
        [model.encode_image(_normalise(split.images[i : i + batch], mean, std)) for i in range(0, len(split.images), batch)]
    )
    img = torch.nn.functional.normalize(img.float(), dim=-1)

    def embed(texts: list[str]) -> torch.Tensor:
        out = [model.encode_text(tokenizer(texts[i : i + batch])) for i in range(0, len(texts), batch)]
        return torch.nn.functional.normalize(torch.cat(out).float(), dim=-1)

    texts = sorted({c for caps in split.captions for c in caps})
    index = {t: i for i, t in enumerate(texts)}
    txt = embed(texts)
    own = torch.zeros(len(split.keys), len(texts), dtype=torch.bool)
    for i, caps in enumerate(split.captions):
        own[i, [index[c] for c in caps]] = True
    sim = img @ txt.T
    report = {
        "i2t_top1": float(own[torch.arange(len(split.keys)), sim.argmax(1)].float().mean()),
        "t2i_top1": float(own[sim.argmax(0), torch.arange(len(texts))].float().mean()),
    }
    if data_name == "shapes":
        report.update(_shapes_attributes(split, img, embed))
    return report


def _shapes_attributes(split: _Split, img: torch.Tensor, embed) -> dict[str, float]:
    combos = [(c, s, b, z) for c in COLOURS for s in SHAPES for b in BACKGROUNDS for z in SIZES]
    canon = embed([caption_for(*combo) for combo in combos])
    best = (img @ canon.T).argmax(1).tolist()
    hits = {"colour": [], "shape": [], "background": [], "size": []}
    for i, caps in enumerate(split.captions):
        truth = parse_shapes_caption(caps[0])
        got = dict(zip(("colour", "shape", "background", "size"), combos[best[i]]))
        for attr in hits:
            hits[attr].append(got[attr] == truth[attr])
    out = {f"attr_{a}": float(np.mean(v)) for a, v in hits.items()}
    out["attr_all"] = float(np.mean([all(h[i] for h in hits.values()) for i in range(len(split.keys))]))
    return out


# ----------------------------------------------------------------------------- training


def _lr(step: int, pcfg: ClipPretrainConfig) -> float:
    if step < pcfg.warmup_steps:
        return pcfg.lr * (step + 1) / pcfg.warmup_steps
    progress = (step - pcfg.warmup_steps) / max(1, pcfg.steps - pcfg.warmup_steps)
    return pcfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    torch_save({"format": CKPT_FORMAT, **state}, path)


def _load_checkpoint(path: Path, settings: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a torn or foreign file: start over rather than crash
        return None
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT or state.get("settings") != settings:
        return None
    return state


def pretrain_clip(cfg: Config, out: str | Path, work_dir: str | Path | None = None, show: bool = True) -> PretrainReport:
    """Train `cfg.clip.arch` from scratch on data.root's train split; write `out` (safetensors) and
    `out`.json (the report). Resumable: a checkpoint in `work_dir` every `clip.pretrain.checkpoint_every` steps."""
    from open_clip.loss import ClipLoss

    pcfg = cfg.clip.pretrain
    if pcfg.steps < 1 or pcfg.batch_size < 2:
        raise RatlipError("clip.pretrain.steps must be >= 1 and clip.pretrain.batch_size >= 2")
    out = Path(out)
    work = Path(work_dir) if work_dir else out.with_suffix(".work")
    prepared = ensure_dataset(cfg)
    for split in ("train", "test"):
        if split not in prepared.splits:
            raise RatlipError(f"{prepared.root} has no '{split}' split; pretrain-clip trains on train and reports on test")
    settings = settings_key(cfg.clip.arch, pcfg, cfg.data.name, cfg.data.prepared_size)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(pcfg.seed, "clip-pretrain-init"))
        model, tokenizer = load_clip(cfg.clip.arch, "random", cfg.clip.cache_dir, random_notice=False)  # to be trained
    size = clip_image_size(model)
    train_split = _Split(prepared, "train", size)
    test_split = _Split(prepared, "test", size)
    mean, std = _mean_std(model)

    model.requires_grad_(True).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = adamw(
        [{"params": decay, "weight_decay": pcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=pcfg.lr, betas=(0.9, 0.98), eps=1e-6,
    )  # fmt: skip
    tune_cpu_allocator(True)  # as `ratlip train` and `ratlip eval`: no page faults per step
    loss_fn = ClipLoss()
    rng = np.random.default_rng(derive_seed(pcfg.seed, "clip-pretrain-data") % (2**32))
    step, seconds = 0, 0.0
    ckpt = work / "ckpt.pt"
    state = _load_checkpoint(ckpt, settings)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state = json.loads(state["rng"])
        step, seconds = int(state["step"]), float(state["seconds"])
        if show:
            console.print(f"resuming CLIP pretraining from step {step} ({ckpt})", highlight=False)
    tokens_cache: dict[str, torch.Tensor] = {}

    def tokens(texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in tokens_cache]
        if missing:
            for t, row in zip(missing, tokenizer(missing)):
                tokens_cache[t] = row
        return torch.stack([tokens_cache[t] for t in texts])

    n = len(train_split.keys)
    with progress_bars(show) as bars:
        task = bars.add_task(f"pretrain CLIP {cfg.clip.arch}", total=pcfg.steps, completed=step)
        while step < pcfg.steps:
            start = time.perf_counter()
            idx = rng.choice(n, size=min(pcfg.batch_size, n), replace=False)
            images = train_split.images[idx]
            if pcfg.flip:
                flip = rng.random(len(idx)) < 0.5
                images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
            caps = [train_split.captions[i][int(rng.integers(len(train_split.captions[i])))] for i in idx]
            for group in opt.param_groups:
                group["lr"] = _lr(step, pcfg)
            img_f, txt_f, scale = model(_normalise(np.ascontiguousarray(images), mean, std), tokens(caps))[:3]
            loss = loss_fn(img_f, txt_f, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():  # open_clip clamps the learned temperature at 100
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            seconds += time.perf_counter() - start
            bars.update(task, advance=1, description=f"pretrain CLIP {cfg.clip.arch} loss {loss.item():.3f}")
            if step % pcfg.checkpoint_every == 0 or step == pcfg.steps:
                _save_checkpoint(
                    ckpt,
                    {"settings": settings, "step": step, "seconds": seconds, "model": model.state_dict(),
                     "opt": opt.state_dict(), "rng": json.dumps(rng.bit_generator.state)},
                )  # fmt: skip

    model.eval().requires_grad_(False)
    retrieval = retrieval_report(model, tokenizer, test_split, cfg.data.name)
    save_clip_weights(model, out)
    report = PretrainReport(
        weights=str(out), arch=cfg.clip.arch, dataset=str(prepared.root), steps=step,
        images_seen=step * min(pcfg.batch_size, n), seconds=round(seconds, 1), retrieval=retrieval,
        settings={"key": settings, **asdict(pcfg)},
        fingerprints={"train": train_split.fingerprint, "test": test_split.fingerprint},
    )  # fmt: skip
    write_json(out.with_suffix(".json"), asdict(report))
    if ckpt.is_file():
        ckpt.unlink()
        try:
            work.rmdir()
        except OSError:
            pass
    return report


def run_pretrain_command(cfg: Config, out: str | Path | None = None) -> PretrainReport:
    """`ratlip pretrain-clip`: pretrain into `out` (default: the in-domain cache of `cfg`)."""
    target = Path(out) if out else in_domain_clip_path(cfg)
    if target.suffix != ".safetensors":
        raise RatlipError(f"--out must name a .safetensors file, got {target}")
    return pretrain_clip(cfg, out=target, work_dir=target.with_suffix(".work"))


def print_report(report: PretrainReport, as_json: bool = False) -> None:
    """The retrieval table (or JSON) of a pretraining."""
    if as_json:
        console.print_json(json.dumps(asdict(report)))
        return
    from rich.table import Table

    table = Table(title=f"in-domain CLIP {report.arch}: held-out (test split) retrieval, top-1")
    table.add_column("measure")
    table.add_column("rate", justify="right")
    names = {
        "i2t_top1": "image -> text", "t2i_top1": "text -> image", "attr_colour": "colour", "attr_shape": "shape",
        "attr_background": "background", "attr_size": "size", "attr_all": "all four",
    }  # fmt: skip
    for key, value in report.retrieval.items():
        table.add_row(names.get(key, key), f"{value:.3f}")
    console.print(table)
    console.print(
        f"{report.steps} steps, {report.images_seen} images, {report.seconds:.0f} s of training; "
        f"weights: {report.weights}",
        highlight=False,
        soft_wrap=True,
    )
