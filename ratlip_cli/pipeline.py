"""The public Python API: load a trained generator, draw images from prompts, save a model folder.

    from ratlip_cli.pipeline import Pipeline

    pipe = Pipeline.from_pretrained("runs/shapes-1")       # a run, an export folder or a saved folder
    images = pipe.generate(["a red circle"], n=4, seed=0)  # (1, 4, 3, S, S) uint8: `ratlip sample`'s pixels
    pipe.save_pretrained("my-model")                       # config, safetensors weights, README model card

`generate` is `ratlip sample`'s generation (the same prompt checks, per-image noise seeds and float64
sampling), so the same prompts, `n` and seed give the same pixels. A saved folder is an export
(`generator.json`, `generator.safetensors`, `generator_raw.safetensors` when the run kept it, with
their sha256 checks) that holds its own copy of the frozen text encoder's files, plus `README.md`:
it loads with `Pipeline.from_pretrained(folder)` and `ratlip sample --weights folder/generator.safetensors`.
docs/python-api.md has the examples (run as tests by tests/test_python_api.py).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ratlip_cli import __version__
from ratlip_cli.dist import resolve_device
from ratlip_cli.errors import RatlipError
from ratlip_cli.export import (
    CONFIG_FILE,
    GENERATOR_FILES,
    LoadedGenerator,
    export_which,
    load_weights,
    read_export_config,
    resolve_export_paths,
)
from ratlip_cli.files import json_text, write_files
from ratlip_cli.sample import check_prompts, clean_prompts, context_length, generate, prepare_generator

CARD_FILE = "README.md"
# eval.csv columns shown in the model card: the scores, then the protocol that makes them comparable
CARD_SCORES = ("fid", "kid_x1e3", "clip_score", "r_precision")
CARD_PROTOCOL = ("generator", "step", "num_images", "passes", "split", "dataset", "feature_extractor", "eval_clip", "seed")


class Pipeline:
    """A trained generator with its frozen text encoder, ready to draw images from prompts."""

    def __init__(self, loaded: LoadedGenerator, folder: Path, doc: dict[str, Any]) -> None:
        self.loaded = loaded
        self.folder = folder  # the export folder the weights came from
        self.doc = doc  # its generator.json

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: Optional[str] = None, generator: Optional[str] = None,
                        precision: str = "fp64") -> Pipeline:
        """Load a run folder, an export folder, a saved folder or an exported ``.safetensors`` file.

        ``generator`` is "ema" or "raw" (None: the export config's `eval.generator`, as `ratlip sample`);
        ``precision`` fp64 (default: pixels independent of the batch) or fp32 (faster).
        """
        path = Path(path).expanduser()
        if not path.exists():
            raise RatlipError(f"no trained model at {path} (pass a run folder, an export folder or a saved folder)")
        _, doc_path = resolve_export_paths(path, export_which(path, generator))
        loaded = load_weights(path, resolve_device(device), generator)
        return cls(prepare_generator(loaded, precision), doc_path.parent, read_export_config(doc_path))

    @property
    def config(self):
        """The resolved config the generator was trained with (`ratlip_cli.config.Config`)."""
        return self.loaded.cfg

    @property
    def image_size(self) -> int:
        """The side of the generated images, in pixels."""
        return int(self.loaded.cfg.model.image_size)

    def generate(self, prompts: Sequence[str], n: int = 1, seed: int = 0, *, batch_size: int = 16,
                 vary_noise: bool = True) -> torch.Tensor:
        """Images (P, n, 3, S, S) uint8 on the CPU: row i holds ``n`` samples of ``prompts[i]``.

        The same pixels as `ratlip sample PROMPTS --n N --seed SEED` (its grid cells and
        `--save-individual` files); ``vary_noise=False`` is its `--same-noise`.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        kept = [p.kept for p in check_prompts(clean_prompts(list(prompts)), self.loaded.tokenizer,
                                              context_length(self.loaded))]
        return generate(self.loaded, kept, n, seed, batch_size=batch_size, vary_noise=vary_noise)

    def images(self, prompts: Sequence[str], n: int = 1, seed: int = 0, **kwargs: Any) -> list[list[Any]]:
        """`generate` as PIL images: one list of ``n`` images per prompt."""
        from PIL import Image

        pixels = self.generate(prompts, n, seed, **kwargs)
        return [[Image.fromarray(img.permute(1, 2, 0).numpy()) for img in row] for row in pixels]

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write a self-contained model folder: ``generator.json`` (config), the safetensors weights,
        the frozen text encoder's files and a README model card; returns the folder."""
        out = Path(out_dir).expanduser()
        if out.resolve() == self.folder.resolve():
            raise RatlipError(f"{out} is the folder this model was loaded from; save it to another folder")
        if out.exists() and not out.is_dir():
            raise RatlipError(f"{out} exists and is not a folder")
        doc = dict(self.doc)
        files: dict[Path, bytes] = {}
        for name in dict.fromkeys((doc.get("generators") or {"ema": GENERATOR_FILES["ema"]}).values()):
            files[out / name] = (self.folder / name).read_bytes()  # byte for byte: the sha256 checks stay
        doc["clip"] = _copy_text_files(dict(doc.get("clip") or {}), self.folder, out, files)
        files[out / CONFIG_FILE] = json_text(doc).encode("utf-8")
        files[out / CARD_FILE] = model_card(doc, eval_rows(self.folder)).encode("utf-8")
        out.mkdir(parents=True, exist_ok=True)
        write_files(files)
        return out


def _copy_text_files(source: dict[str, Any], folder: Path, out: Path, files: dict[Path, bytes]) -> dict[str, Any]:
    """The text encoder's entry of generator.json with its files ("file") or folder ("dir") copied into ``out``."""
    if source.get("file"):
        src = (folder / source["file"]).resolve()
        if not src.is_file():
            raise RatlipError(f"{folder / CONFIG_FILE} needs {src}, which is missing")
        files[out / src.name] = src.read_bytes()
        source["file"] = src.name
    if source.get("dir"):
        src = (folder / source["dir"]).resolve()
        if not src.is_dir():
            raise RatlipError(f"{folder / CONFIG_FILE} needs the folder {src}, which is missing")
        shutil.copytree(src, out / src.name, dirs_exist_ok=True)
        source["dir"] = src.name
    return source


def eval_rows(folder: Path) -> list[dict[str, str]]:
    """The `ratlip eval` rows of the run an export folder belongs to (runs/NAME/eval.csv), or of a saved folder."""
    for candidate in (folder / "eval.csv", folder.parent / "eval.csv"):
        if candidate.is_file():
            with open(candidate, newline="", encoding="utf-8") as fh:
                return list(csv.DictReader(fh))
    return []


def model_card(doc: dict[str, Any], rows: Sequence[dict[str, str]] = ()) -> str:
    """A README model card for an export: family, RAT size, dataset, evaluations with their protocol,
    license and how to sample."""
    cfg = doc.get("config") or {}
    model, data, clip = cfg.get("model") or {}, cfg.get("data") or {}, cfg.get("clip") or {}
    family = str(doc.get("family") or model.get("family", "ratlip"))
    dataset = str(data.get("name", "unknown"))
    name = str((cfg.get("train") or {}).get("name") or f"{family}-{dataset}")
    hidden = (model.get("rat") or {}).get("hidden")
    settings = [
        ("model.family", family),
        ("RAT hidden size h", str(hidden) if family == "ratlip" else "-"),
        ("image size", f"{model.get('image_size')} px"),
        ("noise z_dim", str(model.get("z_dim"))),
        ("text encoder", f"CLIP {clip.get('arch')} ({clip.get('weights')})" if clip else "-"),
        ("dataset", dataset),
        ("trained", f"{doc.get('step', 0)} steps, {doc.get('images_seen', 0)} images"),
        ("exported by", f"ratlip {doc.get('ratlip_version', __version__)}"),
    ]
    lines = [
        "---",
        "library_name: ratlip",
        "license: mit",
        "pipeline_tag: text-to-image",
        f"tags: [text-to-image, gan, {family}]",
        f"datasets: [{dataset}]",
        "---",
        "",
        f"# {name}",
        "",
        f"A {family} text-to-image GAN generator trained with ratlip on `{dataset}`.",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in settings],
        "",
        "## Evaluation",
        "",
    ]
    if rows:
        columns = [c for c in (*CARD_SCORES, *CARD_PROTOCOL) if any(r.get(c) not in (None, "") for r in rows)]
        lines += ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
        lines += ["", "Rows from the run's eval.csv (`ratlip eval`); compare scores only under the same protocol."]
    else:
        lines += ["No evaluation recorded: `ratlip eval --weights generator.safetensors` computes FID, KID and CLIP scores."]
    lines += [
        "",
        "## How to sample",
        "",
        "```",
        'ratlip sample --weights generator.safetensors "a prompt" --n 8 --seed 0 --out grid.png',
        "```",
        "",
        "```python",
        "from ratlip_cli.pipeline import Pipeline",
        "",
        'pipe = Pipeline.from_pretrained(".")',
        'images = pipe.generate(["a prompt"], n=8, seed=0)  # (1, 8, 3, S, S) uint8, the pixels of ratlip sample',
        "```",
        "",
        "## License",
        "",
        f"ratlip is MIT-licensed. These weights were trained on `{dataset}`: their use follows that dataset's terms",
        "and those of the text encoder's weights.",
        "",
    ]
    return "\n".join(lines)
