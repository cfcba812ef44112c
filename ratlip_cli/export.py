"""The exported generators: `export/generator.safetensors` (EMA), `export/generator_raw.safetensors`
(the trained weights themselves) + `export/generator.json` (no pickle).

- ``generator.safetensors``: the EMA generator's own weights and BatchNorm statistics
  (`trainable_state_dict`: the frozen CLIP is left out); ``generator_raw.safetensors``: the same
  for the raw (trained, not averaged) generator, which GALIP and RATLIP evaluate. Exports written
  before the raw file existed hold the EMA generator only.
- ``generator.json``: ``format``, ``format_version``, ``ratlip_version``, ``family``, ``step``,
  ``images_seen``, ``weights_sha256`` (file name -> sha256 of every weights file, checked by
  `load_generator`), the resolved ``config`` (which rebuilds the generator through its model family,
  `config.model.family`) and ``clip``: the family's description of its frozen text encoder (for
  CLIP families: arch, weights spec, and ``file``: the run's ``clip.safetensors`` relative to the
  JSON when the run used random CLIP weights, so the exact frozen CLIP is rebuilt).

All files are written together (`ratlip_cli.files.write_files`): a failed write leaves the previous
export whole. Identical runs give byte-identical weights (sorted safetensors header).

`load_generator(path, device, which)` takes a run directory, an export folder, or a ``.safetensors``
(or ``.json``) file and returns a `LoadedGenerator` in eval mode; `which` ("ema" or "raw", default:
the export config's `eval.generator`) picks the generator of a folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ratlip_cli import __version__
from ratlip_cli.config import Config, from_dict, to_dict
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import WriteError, json_text, safetensors_bytes, sha256_file, write_files
from ratlip_cli.models.registry import get_family
from ratlip_cli.models.trainable import load_trainable_state_dict, trainable_state_dict
from ratlip_cli.weights import save_clip_weights  # noqa: F401  (re-exported: a run's frozen CLIP file)

FORMAT = "ratlip-generator"
FORMAT_VERSION = 1
WEIGHTS_FILE = "generator.safetensors"
RAW_WEIGHTS_FILE = "generator_raw.safetensors"
CONFIG_FILE = "generator.json"
GENERATOR_FILES = {"ema": WEIGHTS_FILE, "raw": RAW_WEIGHTS_FILE}
EXPORT_FILE = Path("export") / WEIGHTS_FILE  # a run's exported generator, relative to the run folder


def export_generator(
    generator: nn.Module,
    cfg: Config,
    out_dir: str | Path,
    *,
    text: Any = None,
    clip_file: str | Path | None = None,
    step: int = 0,
    images_seen: int = 0,
    raw: nn.Module | None = None,
) -> Path:
    """Write ``out_dir/generator.safetensors``, ``generator_raw.safetensors`` (when `raw`, the trained
    generator, is given) and ``generator.json``; returns the EMA weights path.

    ``generator`` is the EMA generator; ``text`` the run's `TextEncoder` (its ``source`` is
    recorded). Without ``text``, the config's CLIP is recorded, with ``clip_file`` the run's saved
    random CLIP (None when the config names pretrained weights).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    def weights_of(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous().clone() for k, v in trainable_state_dict(module).items()}

    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "step": str(int(step))}
    if text is not None:
        source = text.source
    else:
        source = {"arch": cfg.clip.arch, "weights": cfg.clip.weights, "file": str(clip_file) if clip_file else None}
    clip_info = get_family(cfg).export_source(source, out_dir)
    files = {WEIGHTS_FILE: safetensors_bytes(weights_of(generator), {**meta, "generator": "ema"})}
    if raw is not None:
        files[RAW_WEIGHTS_FILE] = safetensors_bytes(weights_of(raw), {**meta, "generator": "raw"})
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ratlip_version": __version__,
        "family": cfg.model.family,
        "step": int(step),
        "images_seen": int(images_seen),
        "weights_sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "clip": clip_info,
        "generators": {"ema": WEIGHTS_FILE, **({"raw": RAW_WEIGHTS_FILE} if raw is not None else {})},
        "config": to_dict(cfg),
    }
    weights = out_dir / WEIGHTS_FILE
    try:
        write_files({**{out_dir / n: d for n, d in files.items()}, out_dir / CONFIG_FILE: json_text(doc).encode("utf-8")})
    except WriteError as exc:
        raise RatlipError(f"{exc}; the export of step {step} was not written and {out_dir} is unchanged") from None
    return weights


def export_weights_like(source_dir: str | Path, out_dir: str | Path, ema: dict[str, torch.Tensor],
                        raw: dict[str, torch.Tensor], step: int, images_seen: int, extra: dict[str, Any] | None = None
                        ) -> Path:
    """An export in ``out_dir`` (a sibling of ``source_dir``, so its relative text-encoder paths hold) that is
    ``source_dir``'s export with other generator weights (e.g. an older checkpoint's EMA and raw states):
    same config and text encoder, new step, images seen and sha256 records; ``extra`` keys added to the JSON."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if source_dir.parent.resolve() != out_dir.parent.resolve():
        raise RatlipError(f"{out_dir} must sit next to {source_dir} (its text-encoder paths are relative)")
    doc = read_export_config(source_dir / CONFIG_FILE)
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "step": str(int(step))}
    files = {WEIGHTS_FILE: safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in ema.items()},
                                             {**meta, "generator": "ema"}),
             RAW_WEIGHTS_FILE: safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in raw.items()},
                                                 {**meta, "generator": "raw"})}
    doc.update({"step": int(step), "images_seen": int(images_seen), "ratlip_version": __version__,
                "weights_sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
                "generators": {"ema": WEIGHTS_FILE, "raw": RAW_WEIGHTS_FILE}, **(extra or {})})
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        write_files({**{out_dir / n: d for n, d in files.items()}, out_dir / CONFIG_FILE: json_text(doc).encode("utf-8")})
    except WriteError as exc:
        raise RatlipError(f"{exc}; {out_dir} is unchanged") from None
    return out_dir / WEIGHTS_FILE


@dataclass
class LoadedGenerator:
    """An exported generator rebuilt for inference (the family's sampler: text -> images).

    ``generator(z, embed(captions))`` gives images; ``backbone`` is the frozen text encoder's
    module, ``text`` the family's `TextEncoder` (its ``encode`` is what ``embed`` runs).
    """

    generator: nn.Module
    backbone: nn.Module
    tokenizer: Any
    cfg: Config
    step: int = 0
    images_seen: int = 0
    text: Any = None
    which: str = "ema"  # "ema" or "raw": which of the run's generators this is

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @property
    def z_dim(self) -> int:
        return noise_dim(self)

    @torch.no_grad()
    def embed(self, captions: Sequence[str]) -> torch.Tensor:
        """The generator's text condition for ``captions`` (fp32, on the generator's device)."""
        tokens = self.tokenizer(list(captions)).to(self.device)
        return self.text.encode(tokens).float()

    @torch.no_grad()
    def generate(self, captions: Sequence[str], z: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
        """Images (B, 3, S, S) clamped to [-1, 1] for ``captions`` (noise from ``seed`` unless ``z`` is given)."""
        if z is None:
            gen = torch.Generator().manual_seed(int(seed))
            z = torch.randn(len(captions), self.z_dim, generator=gen)
        s = self.embed(captions)
        return self.generator(z.to(self.device, torch.float32), s).float().clamp(-1, 1)


def noise_dim(loaded: Any) -> int:
    """Length of one image's noise vector for a loaded generator: the generator's ``z_dim`` (DM-GAN's
    includes its conditioning augmentation's draw), else ``model.z_dim``."""
    return int(getattr(loaded.generator, "z_dim", loaded.cfg.model.z_dim))


def resolve_export_paths(path: str | Path, which: str = "ema") -> tuple[Path, Path]:
    """(weights, json) for a run directory or an export folder (generator `which`), or a .safetensors / .json file."""
    if which not in GENERATOR_FILES:
        raise RatlipError(f"unknown generator '{which}'; choose ema or raw")
    path = Path(path).expanduser()
    if path.is_dir():
        folder = path / "export" if (path / "export").is_dir() else path
        weights, doc = folder / GENERATOR_FILES[which], folder / CONFIG_FILE
        if not weights.is_file() and which == "raw" and (folder / WEIGHTS_FILE).is_file():
            raise RatlipError(
                f"{folder} holds no raw generator ({RAW_WEIGHTS_FILE}; exports written before ratlip "
                "kept it have the EMA generator only): use --generator ema, or resume the run to re-export"
            )
        if not weights.is_file():
            raise RatlipError(
                f"no exported generator in {path} (expected {weights}); train first or pass the .safetensors file"
            )
    elif path.suffix == ".json":
        doc, weights = path, path.parent / GENERATOR_FILES[which]
    elif path.name == RAW_WEIGHTS_FILE:
        weights, doc = path, path.parent / CONFIG_FILE
    else:
        weights, doc = path, path.with_suffix(".json")
    if not weights.is_file():
        raise RatlipError(f"exported generator not found: {weights}")
    if not doc.is_file():
        raise RatlipError(f"{weights} has no config beside it (expected {doc}); keep the .safetensors and .json together")
    return weights, doc


def read_export_config(path: str | Path) -> dict[str, Any]:
    """The parsed ``generator.json`` of an export (validated format)."""
    path = Path(path).expanduser()
    doc_path = path if path.suffix == ".json" else resolve_export_paths(path)[1]
    if not doc_path.is_file():
        raise RatlipError(f"export config not found: {doc_path}")
    try:
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RatlipError(f"{doc_path} is not readable JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "config" not in doc:
        raise RatlipError(f"{doc_path} is not a ratlip generator export")
    if int(doc.get("format_version", 0)) > FORMAT_VERSION:
        raise RatlipError(f"{doc_path} was written by a newer ratlip (format {doc.get('format_version')}); upgrade ratlip")
    return doc


def verify_weights(weights: Path, doc: dict[str, Any], doc_path: Path) -> None:
    """Refuse weights whose sha256 differs from the one the export's JSON records for that file
    (exports from before ratlip recorded it are not checked)."""
    want = (doc.get("weights_sha256") or {}).get(weights.name)
    if not want:
        return
    try:
        got = sha256_file(weights)
    except OSError as exc:
        raise RatlipError(f"cannot read {weights}: {exc.strerror or exc}") from None
    if got != want:
        raise RatlipError(
            f"{weights} does not match {doc_path.name} (sha256 {got[:12]}..., recorded {want[:12]}...): "
            "the weights were changed or damaged after export; export again or restore the file"
        )


def export_which(path: str | Path, which: str | None) -> str:
    """The generator ("ema" or "raw") a load of `path` means: `which`, the file's own kind, or the
    export config's `eval.generator` (the paper presets evaluate the raw generator)."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        own = "raw" if path.name == RAW_WEIGHTS_FILE else "ema"
        if which is not None and which != own:
            raise RatlipError(f"{path} is the {own} generator but --generator {which} was asked for; pass the export folder")
        return own
    if which is not None:
        return which
    doc = read_export_config(path)
    return str(((doc.get("config") or {}).get("eval") or {}).get("generator", "ema"))


def load_generator(path: str | Path, device: str | torch.device = "cpu", which: str | None = None) -> LoadedGenerator:
    """Rebuild an exported generator (EMA or raw, see `export_which`) with its frozen text encoder and
    tokenizer, in eval mode on ``device``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file


    which = export_which(path, which)
    weights, doc_path = resolve_export_paths(path, which)
    doc = read_export_config(doc_path)
    try:
        cfg = from_dict(doc["config"])
    except RatlipError as exc:
        raise RatlipError(f"{doc_path} holds an invalid config: {exc}") from None
    family = get_family(cfg)
    text = family.export_text_encoder(doc.get("clip") or {}, cfg, doc_path.parent)
    generator = family.build_generator(cfg, text)
    try:
        verify_weights(weights, doc, doc_path)
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise RatlipError(f"{weights} is not a readable safetensors file ({type(exc).__name__})") from None
    try:
        load_trainable_state_dict(generator, state)
    except RatlipError as exc:
        raise RatlipError(f"{weights} does not match the architecture in {doc_path.name}: {exc}") from None
    generator.to(device).eval().requires_grad_(False)
    return LoadedGenerator(generator, text.module, text.tokenizer, cfg, int(doc.get("step", 0)),
                           int(doc.get("images_seen", 0)), text, which)


# ------------------------------------------------------------------ finding a run's weights


def list_runs(runs_dir: str | Path) -> list[Path]:
    """Run folders under `runs_dir` that hold an export, the most recently exported first."""
    exports = [p for p in Path(runs_dir).glob(f"*/{EXPORT_FILE.as_posix()}") if p.is_file()]
    return [p.parent.parent for p in sorted(exports, key=lambda p: p.stat().st_mtime, reverse=True)]


def find_latest_run(runs_dir: str | Path) -> Path:
    """The run under `runs_dir` whose export was written most recently."""
    runs = list_runs(runs_dir)
    if not runs:
        where = f"under {Path(runs_dir)}/" if Path(runs_dir).is_dir() else f"({Path(runs_dir)}/ does not exist)"
        raise RatlipError(
            f"no trained run with an export found {where}; train one with `ratlip train shapes` "
            "or pass --run runs/NAME or --weights FILE"
        )
    return runs[0]


def resolve_weights(run: Optional[str | Path], weights: Optional[str | Path], runs_dir: str | Path) -> tuple[Path, str]:
    """What to pass to `load_generator` and a sentence saying where it came from."""
    if run and weights:
        raise RatlipError("pass either --run or --weights, not both")
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise RatlipError(f"weights file not found: {path} (pass an exported generator.safetensors)")
        if path.suffix != ".safetensors":
            raise RatlipError(f"--weights expects an exported .safetensors file, got {path}")
        return path, f"weights {path}"
    if run:
        path = Path(run).expanduser()
        if not path.is_dir():
            raise RatlipError(f"run directory not found: {path} (runs live under runs/NAME)")
        if not (path / EXPORT_FILE).is_file():
            raise RatlipError(
                f"run {path} has no {EXPORT_FILE.as_posix()}; it is written when training ends "
                "(train longer or resume the run to finish it)"
            )
        return path, f"run {path}"
    path = find_latest_run(runs_dir)
    return path, f"run {path} (the most recent under {Path(runs_dir)}/)"


def load_weights(path: Path, device: torch.device, which: Optional[str] = None):
    """`export.load_generator` (generator `which`: ema, raw, or None for the run's default), with any
    failure turned into a one-line error."""
    try:
        return load_generator(path, device, which)
    except RatlipError:
        raise
    except Exception as exc:  # mismatched shapes, corrupt files, wrong architecture
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if len(reason) > 200:
            reason = reason[:200] + "…"
        raise RatlipError(
            f"cannot load generator weights from {path}: {reason} (do the weights match their JSON config?)"
        ) from None
