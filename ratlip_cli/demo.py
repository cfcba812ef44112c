"""`ratlip demo`: a local web page (Gradio) to draw grids from a trained run's generator.

The drawing itself (`Drawer.draw`) is `ratlip sample`'s code path with its defaults (float64,
noise from (seed, prompt, column)), so every grid the page shows is reproduced pixel for pixel by
the `ratlip sample` command it prints next to it. Gradio is an optional extra
(`pip install -e ".[demo]"`); nothing else in ratlip imports it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from PIL import Image

from ratlip_cli.console import console
from ratlip_cli.errors import RatlipError
from ratlip_cli.dist import resolve_device
from ratlip_cli.export import list_runs, load_weights, resolve_weights
from ratlip_cli.grid import DISPLAY_SIZE, render_grid
from ratlip_cli.sample import check_prompts, context_length, generate, prepare_generator
from ratlip_cli.seeds import row_seeds

MAX_IMAGES = 16
GENERATORS = ("ema", "raw")


@dataclass
class Drawing:
    """One grid the page shows, with what it takes to reproduce it."""

    grid: Image.Image
    prompt: str
    seeds: list[int]
    command: str
    note: str


@dataclass
class Drawer:
    """Loads runs' generators on demand (kept per run and generator) and draws grids from prompts."""

    device: str | None = None
    _cache: dict = field(default_factory=dict)

    def _loaded(self, run: Path, which: str):
        key = (str(Path(run).resolve()), which)
        if key not in self._cache:
            path, _ = resolve_weights(run, None, run.parent)
            self._cache[key] = prepare_generator(load_weights(path, resolve_device(self.device), which))
        return self._cache[key]

    def draw(self, run: str | Path, prompt: str, seed: int, n: int, which: str) -> Drawing:
        """The grid `ratlip sample PROMPT --run RUN --seed SEED --n N --generator WHICH` writes."""
        run = Path(run)
        prompt = " ".join(str(prompt or "").split())
        if not prompt:
            raise RatlipError("type a prompt, e.g. a big red circle on a blue background")
        if which not in GENERATORS:
            raise RatlipError(f"unknown generator '{which}'; choose ema or raw")
        n, seed = int(n), int(seed)
        if not 1 <= n <= MAX_IMAGES:
            raise RatlipError(f"number of images must be 1..{MAX_IMAGES}, got {n}")
        if seed < 0:
            raise RatlipError(f"seed must be 0 or more, got {seed}")
        loaded = self._loaded(run, which)
        checked = check_prompts([prompt], loaded.tokenizer, context_length(loaded), announce=False)
        kept = checked[0].kept
        images = generate(loaded, [kept], n, seed)
        label = f"{kept}…" if checked[0].truncated else prompt
        grid = render_grid(images, [label], display_size=DISPLAY_SIZE)
        command = shlex.join(["ratlip", "sample", prompt, "--run", str(run), "--n", str(n), "--seed", str(seed),
                              "--generator", which])
        note = f"{run.name}: {which} generator, {images.shape[-1]} px" + (
            f"; the prompt was cut to the text context: {kept!r}" if checked[0].truncated else "")
        return Drawing(grid, prompt, row_seeds(seed, kept, n), command, note)


def build_app(runs: list[Path], device: Optional[str] = None):
    """The Gradio page: run, prompt, seed, number of images and generator in; grid, seeds and command out."""
    try:
        import gradio as gr
    except ImportError:
        raise RatlipError('the demo needs Gradio: pip install -e ".[demo]"') from None

    drawer = Drawer(device)
    choices = [str(r) for r in runs]

    def on_draw(run: str, prompt: str, seed: float, n: float, which: str):
        try:
            d = drawer.draw(run, prompt, int(seed), int(n), which)
        except RatlipError as exc:
            raise gr.Error(str(exc)) from None
        seeds = [[j, str(s)] for j, s in enumerate(d.seeds)]  # text: 63-bit seeds do not fit a JS number
        return d.grid, seeds, d.command, d.note

    with gr.Blocks(title="ratlip demo") as app:
        gr.Markdown("# ratlip demo\nDraw a grid from a trained run. Every grid is reproduced, pixel for pixel, "
                    "by the `ratlip sample` command shown under it.")
        with gr.Row():
            with gr.Column(scale=1):
                run = gr.Dropdown(choices, value=choices[0], label="run", elem_id="run")
                prompt = gr.Textbox(label="prompt", value="", placeholder="a big red circle on a blue background",
                                    elem_id="prompt")
                seed = gr.Number(value=0, precision=0, minimum=0, label="seed", elem_id="seed")
                n = gr.Slider(1, MAX_IMAGES, value=8, step=1, label="images", elem_id="n")
                which = gr.Radio(list(GENERATORS), value="ema", label="generator", elem_id="generator")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                grid = gr.Image(type="pil", label="grid", format="png", elem_id="grid")
                note = gr.Textbox(label="drawn with", interactive=False, elem_id="note")
                command = gr.Textbox(label="reproduce with", interactive=False, elem_id="command")
                seeds = gr.Dataframe(headers=["column", "noise seed"], datatype=["number", "str"], label="noise seed of each column",
                                     interactive=False, elem_id="seeds")
        inputs = [run, prompt, seed, n, which]
        outputs = [grid, seeds, command, note]
        button.click(on_draw, inputs, outputs)
        prompt.submit(on_draw, inputs, outputs)
    return app


@dataclass
class DemoOptions:
    """Everything `ratlip demo` was asked for (the CLI fills this in, as for every command)."""

    run: Optional[Path] = None
    runs_dir: Path = Path("runs")
    host: str = "127.0.0.1"
    port: int = 7860
    device: Optional[str] = None
    share: bool = False


def run_demo(opts: DemoOptions) -> None:
    """Serve the page until interrupted (what `ratlip demo` calls)."""
    run, runs_dir, host, port = opts.run, Path(opts.runs_dir), opts.host, opts.port
    runs = list_runs(runs_dir) if runs_dir.is_dir() else []
    if run is not None:
        resolve_weights(run, None, runs_dir)  # a missing run or export fails here, in one line
        runs = [Path(run)] + [r for r in runs if r.resolve() != Path(run).resolve()]
    if not runs:
        raise RatlipError(f"no trained run with an export under {runs_dir}/; train one with `ratlip train shapes` "
                          "or pass a run folder")
    if not 1 <= port <= 65535:
        raise RatlipError(f"--port must be 1..65535, got {port}")
    app = build_app(runs, opts.device)
    console.print(f"demo of {len(runs)} run(s) at http://{host}:{port} (Ctrl-C stops it)", highlight=False)
    app.launch(server_name=host, server_port=port, share=opts.share, show_error=True, quiet=True)
