"""Sampling: prompts in, reproducible images and captioned grids out.

The pure parts (noise seeds, prompt checks, generation, grid layout and rendering) are importable
without the CLI; `run_sample` is what `ratlip sample` calls.

Reproducibility: every image's noise vector comes from its own `torch.Generator`, seeded with a
stable hash of (seed, noise key, column). The noise key is the prompt text (or "" when noise is
shared across rows), and each prompt is encoded on its own, so an image's inputs depend only on its
prompt, the seed, its column and the weights. Batched float32 kernels still round differently for
different batch shapes (1e-7, enough to move a few pixels by one level in a large grid), so
sampling computes in float64 by default (`prepare_generator`): there the differences are ~1e-16 and
no pixel changes with the batch size or with the other prompts in the call.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from rich.markup import escape

from ratlip_cli.dist import resolve_device
from ratlip_cli.console import console, warn
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import write_text
from ratlip_cli.export import EXPORT_FILE, find_latest_run, load_weights, resolve_weights  # noqa: F401 (re-exported)
from ratlip_cli.grid import (  # noqa: F401 (re-exported: the grid and image helpers live in grid.py)
    LABEL_MAX_LINES,
    GridLayout,
    default_font_size,
    DISPLAY_SIZE,
    display_scale,
    grid_layout,
    image_format,
    label_font,
    render_grid,
    save_image,
    to_pil,
    to_uint8,
    wrap_label,
)
from ratlip_cli.seeds import interpolation_seeds, make_noise, noise_seed, row_seeds  # noqa: F401 (re-exported)

PRECISIONS = {"fp64": torch.float64, "fp32": torch.float32}

# --------------------------------------------------------------------------------------- noise


# One rule for every sampled image's noise: ratlip_cli.seeds.


# ------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Prompt:
    """A checked prompt: `text` as given (stripped), `kept` what the text tower actually reads."""

    text: str
    kept: str
    truncated: bool = False


def clean_prompts(prompts: Sequence[str]) -> list[str]:
    """Strip prompts; an empty or whitespace-only prompt is an error naming its position."""
    cleaned = []
    for i, text in enumerate(prompts, 1):
        stripped = " ".join(str(text).split())
        if not stripped:
            raise RatlipError(f"prompt {i} is empty; give some text, e.g. ratlip sample \"a red circle\"")
        cleaned.append(stripped)
    return cleaned


def read_prompts_file(path: str | Path) -> list[str]:
    """Prompts from a UTF-8 text file, one per line; blank lines and lines starting with # are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RatlipError(f"cannot read prompts file {path}: not UTF-8 text") from None
    except OSError as exc:
        raise RatlipError(f"cannot read prompts file {path}: {exc.strerror or exc}") from None
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise RatlipError(f"prompts file {path} holds no prompts (one per line; # starts a comment)")
    return prompts


def context_length(loaded) -> int:
    """The text encoder's context length (or the tokenizer's as a fallback)."""
    ctx = getattr(loaded.text, "context_length", None) or getattr(loaded.tokenizer, "context_length", None)
    if not ctx:
        raise RatlipError("cannot tell the text tower's context length from the loaded weights")
    return int(ctx)


def check_prompt(text: str, tokenizer, ctx: int) -> Prompt:
    """Compare the untruncated token count with the context; report what truncation keeps."""
    encode = getattr(tokenizer, "encode", None)
    decode = getattr(tokenizer, "decode", None)
    if encode is None or decode is None:  # tokenizers without encode/decode truncate on their own
        return Prompt(text, text)
    ids = list(encode(text))
    room = ctx - 2  # start and end tokens
    if len(ids) <= room:
        return Prompt(text, text)
    kept = decode(ids[:room]).strip()
    return Prompt(text, kept, truncated=True)


def check_prompts(prompts: Sequence[str], tokenizer, ctx: int, announce: bool = True) -> list[Prompt]:
    """Check every prompt; with `announce`, warn once per truncated prompt showing what was kept."""
    checked = []
    for i, text in enumerate(prompts, 1):
        p = check_prompt(text, tokenizer, ctx)
        if p.truncated and announce:
            kept = escape(p.kept)
            warn(f"prompt {i} is longer than the text tower's {ctx}-token context; truncated, kept: \"{kept}\"")
        checked.append(p)
    return checked


# ---------------------------------------------------------------------------------- generation


def prepare_generator(loaded, precision: str = "fp64", device: str | torch.device | None = None):
    """Eval mode and the sampling precision (fp64: batch-size-independent pixels; fp32: faster)."""
    if precision not in PRECISIONS:
        raise RatlipError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    for module in (loaded.generator, loaded.backbone):
        module.to(device=device, dtype=dtype).eval()
    return loaded


def _param_dtype(module: torch.nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def _param_device(module: torch.nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


@torch.no_grad()
def encode_prompts(loaded, prompts: Sequence[str]) -> torch.Tensor:
    """The generator's text conditions (P, E) on the CPU, one prompt at a time so no prompt depends on the others."""
    ctx = context_length(loaded)
    device = _param_device(loaded.backbone)
    out = []
    for text in prompts:
        tokens = loaded.tokenizer([text], context_length=ctx).to(device)
        out.append(loaded.text.encode(tokens)[0].cpu())
    return torch.stack(out).to(_param_dtype(loaded.generator))


@torch.no_grad()
def generate_from_embeddings(
    loaded,
    sentences: torch.Tensor,
    seeds: Sequence[int],
    batch_size: int = 16,
    on_batch: Optional[Callable[[int], None]] = None,
) -> torch.Tensor:
    """Images (N, 3, S, S) uint8 on the CPU for N (sentence embedding, noise seed) pairs, in batches.

    Runs on the generator's device and in its dtype (see `prepare_generator`).
    """
    if len(sentences) != len(seeds):
        raise ValueError(f"{len(sentences)} embeddings but {len(seeds)} seeds")
    if batch_size < 1:
        raise RatlipError(f"--batch-size must be at least 1, got {batch_size}")
    generator = loaded.generator.eval()
    dtype, device = _param_dtype(generator), _param_device(generator)
    from ratlip_cli.export import noise_dim

    z_all = make_noise(seeds, noise_dim(loaded)).to(dtype)
    out = []
    for start in range(0, len(seeds), batch_size):
        z = z_all[start : start + batch_size].to(device)
        s = sentences[start : start + batch_size].to(device=device, dtype=dtype)
        out.append(to_uint8(generator(z, s)))
        if on_batch is not None:
            on_batch(len(z))
    return torch.cat(out)


def generate(
    loaded,
    prompts: Sequence[str],
    n: int,
    seed: int = 0,
    *,
    batch_size: int = 16,
    vary_noise: bool = True,
    on_batch: Optional[Callable[[int], None]] = None,
) -> torch.Tensor:
    """Images (P, n, 3, S, S) uint8: row i holds `n` samples of `prompts[i]`.

    Noise of image (i, j) comes from (seed, prompts[i], j), or (seed, j) with `vary_noise=False`.
    Prompts past the text context are cut by the tokenizer (`check_prompts` says what is kept).
    """
    _check_counts(n, batch_size)
    sentences = encode_prompts(loaded, prompts)
    emb = sentences.repeat_interleave(n, dim=0)
    seeds = [s for p in prompts for s in row_seeds(seed, p, n, vary_noise)]
    images = generate_from_embeddings(loaded, emb, seeds, batch_size, on_batch)
    return images.view(len(prompts), n, *images.shape[1:])


def interpolate(
    loaded,
    prompt_a: str,
    prompt_b: str,
    steps: int,
    seed: int = 0,
    *,
    batch_size: int = 16,
    vary_noise: bool = False,
    on_batch: Optional[Callable[[int], None]] = None,
) -> torch.Tensor:
    """One row (1, steps, 3, S, S) uint8 walking linearly from A's sentence embedding to B's.

    One noise for the whole row (from (seed, column 0), as `generate(..., vary_noise=False)`), or
    one per step with `vary_noise=True`.
    """
    if steps < 2:
        raise RatlipError(f"--steps must be at least 2 for --interpolate, got {steps}")
    _check_counts(steps, batch_size)
    sa, sb = encode_prompts(loaded, [prompt_a, prompt_b])
    t = torch.linspace(0.0, 1.0, steps, dtype=sa.dtype).unsqueeze(1)
    emb = (1.0 - t) * sa.unsqueeze(0) + t * sb.unsqueeze(0)  # exactly A at t=0 and B at t=1
    seeds = interpolation_seeds(seed, steps, vary_noise)
    images = generate_from_embeddings(loaded, emb, seeds, batch_size, on_batch)
    return images.unsqueeze(0)


def _check_counts(n: int, batch_size: int) -> None:
    if n < 1:
        raise RatlipError(f"--n must be at least 1 (images per prompt), got {n}")
    if batch_size < 1:
        raise RatlipError(f"--batch-size must be at least 1, got {batch_size}")


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].rstrip("-") or "prompt"


# -------------------------------------------------------------------------------- the command


@dataclass
class SampleOptions:
    """Everything `ratlip sample` was asked for (the CLI fills this in)."""

    prompts: list[str] = field(default_factory=list)
    prompts_file: Optional[Path] = None
    run: Optional[Path] = None
    weights: Optional[Path] = None
    runs_dir: Path = Path("runs")
    n: int = 8
    seed: int = 0
    out: Path = Path("grid.png")
    save_individual: Optional[Path] = None
    display_size: int = DISPLAY_SIZE
    device: Optional[str] = None
    batch_size: int = 16
    interpolate: Optional[tuple[str, str]] = None
    steps: int = 8
    vary_noise: Optional[bool] = None  # None: vary for prompt rows, fixed for --interpolate
    precision: str = "fp64"
    generator: Optional[str] = None  # "ema" or "raw"; None: the export config's eval.generator
    all_stages: bool = False


def _collect_prompts(opts: SampleOptions) -> list[str]:
    prompts = list(opts.prompts)
    if opts.prompts_file is not None:
        prompts += read_prompts_file(opts.prompts_file)
    if opts.interpolate:
        if prompts:
            raise RatlipError("--interpolate makes its own row from its two prompts; do not also pass prompts")
        return clean_prompts(list(opts.interpolate))
    if not prompts:
        raise RatlipError('give at least one prompt, e.g. ratlip sample "a red circle on a blue background"')
    return clean_prompts(prompts)


def run_sample(opts: SampleOptions) -> Path:
    """Generate, render and save a captioned grid (and optionally the single images); returns the path."""
    prompts = _collect_prompts(opts)
    columns = opts.steps if opts.interpolate else opts.n
    if opts.interpolate and opts.steps < 2:
        raise RatlipError(f"--steps must be at least 2 for --interpolate, got {opts.steps}")
    _check_counts(columns, opts.batch_size)
    display_scale(1, opts.display_size)  # a negative size is refused before any work
    image_format(opts.out)
    if opts.precision not in PRECISIONS:
        raise RatlipError(f"unknown --precision '{opts.precision}'; choose one of: {', '.join(PRECISIONS)}")
    if opts.all_stages and opts.interpolate:
        raise RatlipError("--all-stages and --interpolate cannot be combined; choose one")
    path, source = resolve_weights(opts.run, opts.weights, opts.runs_dir)
    device = resolve_device(opts.device)
    if opts.generator not in (None, "ema", "raw"):
        raise RatlipError(f"unknown --generator '{opts.generator}'; choose ema or raw")
    loaded = load_weights(path, device, opts.generator)
    _say(f"sampling from {source} ({loaded.which} generator) on {device}")
    loaded = prepare_generator(loaded, opts.precision)
    checked = check_prompts(prompts, loaded.tokenizer, context_length(loaded))
    kept = [p.kept for p in checked]
    total_stages = int(getattr(loaded.generator, "stages", 1))
    if opts.all_stages and total_stages < 2:
        raise RatlipError(f"--all-stages needs a multi-stage generator (model.family=dmgan); {source} is "
                          f"a {loaded.cfg.model.family} generator with one output")
    vary = opts.vary_noise if opts.vary_noise is not None else not opts.interpolate

    total = columns if opts.interpolate else len(kept) * columns * (total_stages if opts.all_stages else 1)
    from ratlip_cli.progress import progress_bar

    with progress_bar("generating", stderr=True, transient=True, enabled=total > opts.batch_size) as progress:
        task = progress.add_task("generating", total=total)

        def advance(k: int) -> None:
            progress.advance(task, k)

        common = dict(batch_size=opts.batch_size, vary_noise=vary, on_batch=advance)
        if opts.all_stages:
            images, labels, seeds = _all_stages(loaded, kept, checked, columns, opts.seed, common)
        elif opts.interpolate:
            images = interpolate(loaded, kept[0], kept[1], opts.steps, opts.seed, **common)
            labels = [f"{_label(checked[0])}  ->  {_label(checked[1])}"]
            seeds = [interpolation_seeds(opts.seed, opts.steps, vary)]
        else:
            images = generate(loaded, kept, columns, opts.seed, **common)
            labels = [_label(p) for p in checked]
            seeds = [row_seeds(opts.seed, text, columns, vary) for text in kept]

    grid = render_grid(images, labels, display_size=opts.display_size)
    out = save_image(grid, opts.out)
    if opts.save_individual is not None:
        row_prompts = [p for p in checked for _ in range(total_stages)] if opts.all_stages else checked
        _save_individual(opts.save_individual, images, row_prompts, seeds, bool(opts.interpolate))
    rows, cols = images.shape[:2]
    size = images.shape[-1]
    scale = display_scale(size, opts.display_size)
    shown = f", shown {scale}x at {size * scale}x{size * scale}" if scale > 1 else ""
    _say(f"wrote {out} ({_count(rows, 'row')} x {_count(cols, 'image')} of {size}x{size}{shown})")
    _say(f"seed {opts.seed}; {_noise_note(vary, bool(opts.interpolate))}")
    if opts.save_individual is not None:
        _say(f"single images and their noise seeds (seeds.csv) in {opts.save_individual}")
    return out


def _all_stages(loaded, kept: list[str], checked: list[Prompt], columns: int, seed: int, common: dict):
    """One row per (prompt, stage): every stage's image from the same noise, upsampled (nearest) to the last size."""
    gen = loaded.generator
    last = gen.stage
    per_stage = []
    try:
        for k in range(gen.stages):
            gen.stage = k
            per_stage.append(generate(loaded, kept, columns, seed, **common))
    finally:
        gen.stage = last
    size = per_stage[-1].shape[-1]
    rows, labels, seeds = [], [], []
    for i, p in enumerate(checked):
        for k, images in enumerate(per_stage):
            row = images[i]
            if row.shape[-1] != size:
                row = torch.nn.functional.interpolate(row.float(), size=(size, size), mode="nearest").to(torch.uint8)
            rows.append(row)
            labels.append(f"{_label(p)} [stage {k + 1}: {images.shape[-1]} px]")
            seeds.append(row_seeds(seed, p.kept, columns, common["vary_noise"]))
    return torch.stack(rows), labels, seeds


def _say(message: str) -> None:
    console.print(message, highlight=False, markup=False, soft_wrap=True)


def _count(k: int, noun: str) -> str:
    return f"{k} {noun}{'s' if k != 1 else ''}"


def _label(p: Prompt) -> str:
    return f"{p.kept}…" if p.truncated else p.text


def _noise_note(vary: bool, interpolating: bool) -> str:
    if interpolating:
        return "each step has its own noise (--vary-noise)" if vary else "one fixed noise across the row (--fixed-noise)"
    if vary:
        return "each image's noise comes from (seed, prompt, column): same prompt + seed = same pixels"
    return "column j shares one noise across all prompts (--fixed-noise): same seed = same noise per column"


def _save_individual(folder: Path, images: torch.Tensor, checked: list[Prompt], seeds, interpolating: bool) -> None:
    """Each image as its own PNG, plus seeds.csv: file, row, column, noise seed, prompt."""
    folder = Path(folder)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["file", "row", "column", "noise_seed", "prompt"])
    for r in range(images.shape[0]):
        for c in range(images.shape[1]):
            stem = f"interp-{c:03d}" if interpolating else f"{r:03d}-{c:03d}-{slug(checked[r].kept)}"
            save_image(to_pil(images[r, c]), folder / f"{stem}.png")
            text = f"{checked[0].kept} -> {checked[1].kept}" if interpolating else checked[r].kept
            writer.writerow([f"{stem}.png", r, c, seeds[r][c], text])
    write_text(folder / "seeds.csv", table.getvalue())


__all__ = [
    "GridLayout",
    "Prompt",
    "SampleOptions",
    "check_prompt",
    "check_prompts",
    "clean_prompts",
    "encode_prompts",
    "find_latest_run",
    "generate",
    "generate_from_embeddings",
    "grid_layout",
    "interpolate",
    "make_noise",
    "prepare_generator",
    "noise_seed",
    "read_prompts_file",
    "render_grid",
    "resolve_device",
    "resolve_weights",
    "row_seeds",
    "run_sample",
    "save_image",
    "to_uint8",
    "wrap_label",
]
