"""The `ratlip` command line: parses options, resolves the config and delegates to one function per command."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
import typer.core
from rich.markup import escape

from ratlip_cli import __version__, refusals
from ratlip_cli.console import console, err_console
from ratlip_cli.errors import RatlipError


def literal_help(command) -> None:
    """Make a click command's help, epilog and parameter help print as written under Rich markup.

    Help is plain text: brackets such as `pip install -e ".[demo]"` or `[default: ...]` are words,
    never markup tags, so every string is escaped here once instead of by hand.
    """
    if getattr(command, "rich_markup_mode", None) != "rich":
        return
    for attr in ("help", "short_help", "epilog"):
        if getattr(command, attr, None):
            setattr(command, attr, escape(getattr(command, attr)))
    for param in command.params:
        if getattr(param, "help", None):
            param.help = escape(param.help)


class LiteralHelpCommand(typer.core.TyperCommand):
    """A command whose help text is shown as written (`literal_help`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        literal_help(self)


class LiteralHelpGroup(typer.core.TyperGroup):
    """The `ratlip` group, its help shown as written (`literal_help`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        literal_help(self)


class RatlipTyper(typer.Typer):
    """A Typer app whose commands default to `LiteralHelpCommand`."""

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or LiteralHelpCommand, **kwargs)


app = RatlipTyper(
    cls=LiteralHelpGroup,
    name="ratlip",
    help="Train, sample, evaluate and ablate RATLIP text-to-image GANs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

PresetArg = Annotated[
    Optional[str],
    typer.Argument(help="Preset (dataset) name: cub, oxford, celeba-tiny, coco, cc12m, shapes or tiny."),
]
ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", help="A YAML file of config keys, applied after the preset."),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        help="Override one config key, e.g. --set train.batch_size=8 or --set model.rat.hidden=0 (repeatable).",
    ),
]
DeviceOpt = Annotated[
    Optional[str],
    typer.Option("--device", help="cpu, cuda or cuda:N; default: CUDA when present, else CPU."),
]


def friendly(fn):
    """Turn RatlipError into a one-line message and exit code 2, and Ctrl-C into exit code 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RatlipError as exc:
            err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]")
            raise typer.Exit(130) from None

    return wrapper


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"ratlip {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Train, sample, evaluate and ablate RATLIP text-to-image GANs."""


def _resolve(preset: Optional[str], config: Optional[Path], sets: Optional[list[str]]):
    from ratlip_cli.config import resolve_config

    return resolve_config(preset, config, sets)


@app.command(epilog=refusals.epilog("info"))
@friendly
def info(
    preset: PresetArg = "cub",
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Show versions, devices, and where CLIP and Inception weights would come from."""
    from ratlip_cli.info import show_info

    refusals.check_keys("info", refusals.set_keys(sets))
    show_info(_resolve(preset, config, sets))


@app.command(epilog=refusals.epilog("prepare"))
@friendly
def prepare(
    ctx: typer.Context,
    kind: Annotated[
        Literal["cub", "oxford", "celeba-tiny", "coco", "folder", "webdataset", "shapes"],
        typer.Argument(
            help="Raw layout to read: cub, oxford, celeba-tiny (Multi-Modal CelebA-HQ), coco (2014), "
            "folder (images + same-stem .txt captions), webdataset (a folder of img2dataset tar shards), "
            "or shapes (built-in synthetic dataset, no --src).",
            show_default=False,
        ),
    ],
    src: Annotated[
        Optional[Path],
        typer.Option(
            "--src",
            help="Folder holding the raw dataset. cub: CUB_200_2011/, text/, train/, test/; oxford: jpg/, "
            "text_c10/; celeba-tiny: images/, text/; coco: images/train2014, images/val2014, annotations/; "
            "folder: the images; webdataset: the .tar files. Not used by shapes.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", help="Where to write the prepared dataset [default: the preset's data.root, e.g. data/cub]."),
    ] = None,
    size: Annotated[
        Optional[int],
        typer.Option(
            "--size",
            min=8,
            help="Shorter side of the stored images in pixels, aspect kept (shapes: the square side) "
            "[default: the preset's data.prepared_size: 304, shapes 64].",
        ),
    ] = None,
    preset: Annotated[
        Optional[str],
        typer.Option("--preset", help="Take the --out and --size defaults from this preset instead of the one named like KIND (e.g. tiny)."),
    ] = None,
    split_file: Annotated[
        Optional[Path],
        typer.Option(
            "--split-file",
            help="folder only: a text file of '<image path> <train|test|val>' lines; without it 10% of "
            "images (by a hash of the name) go to test.",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option("--workers", min=0, help="Processes decoding and resizing images; 0 = one per CPU core (at most 8)."),
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", min=0, help="shapes only: the random seed of the generated dataset.")] = 0,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Delete a dataset previously prepared in --out with other settings, then prepare."),
    ] = False,
    fmt: Annotated[
        Literal["prepared", "shards"],
        typer.Option(
            "--format",
            help="prepared: one image file per sample plus CSV indexes; shards: WebDataset tar shards "
            "(<key>.jpg|png, .txt, .json) with a manifest, for streaming and many nodes.",
        ),
    ] = "prepared",
    shard_mb: Annotated[
        Optional[float],
        typer.Option("--shard-mb", min=0.001, help="--format shards only: target shard size in MB [default: 1000].",
                     show_default=False),
    ] = None,
    decoded: Annotated[
        bool,
        typer.Option("--decoded", help="--format prepared only: also store every image decoded (raw RGB, one "
                     "memory-mapped file beside the images) so training crops from memory instead of decoding a "
                     "JPEG/PNG per item; same pixels, several times faster loading, about 10x the disk of JPEGs. "
                     "Rerun on an existing dataset to add or refresh it."),
    ] = False,
    test_percent: Annotated[
        Optional[int],
        typer.Option("--test-percent", min=0, max=100,
                     help="webdataset only: percent of samples (by a hash of the key) in the test split [default: 10].",
                     show_default=False),
    ] = None,
) -> None:
    """Turn a raw dataset (CUB, Oxford-102, CelebA-tiny, COCO, a captioned folder, img2dataset shards) or `shapes` into ratlip's format.

    Resumable: re-run the same command after an interruption; finished images (or shards) are kept.

    Formats and layouts: docs/data.md. Skipped files are listed in OUT/report.txt.
    """
    from ratlip_cli.data.prepare import PrepareOptions, run_prepare

    refusals.check("prepare", ctx)
    run_prepare(PrepareOptions(kind=kind, src=src, out=out, size=size, preset=preset, split_file=split_file,
                               workers=workers, overwrite=overwrite, seed=seed, fmt=fmt, shard_mb=shard_mb,
                               test_percent=test_percent, decoded=decoded))


@app.command(epilog=refusals.epilog("train"))
@friendly
def train(
    ctx: typer.Context,
    preset: Annotated[
        Optional[str],
        typer.Argument(
            help="Preset (dataset) name: cub, oxford, celeba-tiny, coco, cc12m, shapes or tiny (default: shapes; "
            "with --resume: the run's own)."
        ),
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    resume: Annotated[
        Optional[Path],
        typer.Option(
            "--resume",
            help="Continue the run in this directory (runs/NAME) from its newest valid checkpoint, with its own "
            "config; --set/--config may change budget, logging, learning rates, loss weights, precision, device "
            "and data.root, not the keys the checkpoint fixes (listed below).",
        ),
    ] = None,
    device: DeviceOpt = None,
    precision: Annotated[
        Optional[str],
        typer.Option(
            "--precision",
            help="fp32, amp_bf16 or amp_fp16 (autocast; fp16 adds a GradScaler); default: train.precision (fp32).",
        ),
    ] = None,
    gpus: Annotated[
        Optional[int],
        typer.Option(
            "--gpus",
            help="Train on N GPUs of this machine: relaunches itself through torchrun (one process per GPU, "
            "batch_size per process). With --device cpu, N CPU processes (gloo). Multi-node: run "
            "`torchrun ... -m ratlip_cli train` yourself.",
        ),
    ] = None,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print the resolved config as YAML and exit.")
    ] = False,
) -> None:
    """Train a RATLIP model on a prepared dataset (default preset: the built-in `shapes`).

    --set model.family=dmgan trains DM-GAN instead (after `ratlip pretrain-text` on the same dataset).

    Writes runs/NAME/ (config.yaml, metrics.csv, samples/, checkpoints/, export/).

    Ctrl-C or SIGTERM checkpoints at the next step and stops; `ratlip train --resume runs/NAME` continues exactly.
    """
    from ratlip_cli.train.command import TrainOptions, run_train_command

    refusals.check("train", ctx)
    code = run_train_command(TrainOptions(preset=preset, config=config, sets=list(sets or []), resume=resume,
                                          device=device, precision=precision, gpus=gpus, print_config=print_config))
    if code:
        raise typer.Exit(code)


@app.command(name="pretrain-clip")
@friendly
def pretrain_clip(
    preset: Annotated[
        Optional[str],
        typer.Argument(help="Preset (dataset) whose clip.arch and data.root to use (default: shapes)."),
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            help="Where to write the weights (safetensors; a .json report beside it). Default: the cache that "
            "clip.weights=in-domain reads, <data.root>/in-domain-clip/<arch>-<settings hash>.safetensors.",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Train the preset's small CLIP (clip.arch) contrastively on the dataset's train split (open_clip's ClipLoss).

    Settings: clip.pretrain.* (steps, batch_size, lr, warmup_steps, weight_decay, flip, seed,
    checkpoint_every). Resumable: rerun the same command after an interruption. Reports image->text and
    text->image top-1 retrieval on the test split (and, for shapes, colour/shape/background/size).
    The weights load with --set clip.weights=FILE; the shapes preset uses clip.weights=in-domain.
    """
    from ratlip_cli.clip_pretrain import print_report, run_pretrain_command

    report = run_pretrain_command(_resolve(preset or "shapes", config, sets), out)
    print_report(report, as_json=json_out)
@app.command(name="pretrain-text")
@friendly
def pretrain_text(
    preset: Annotated[
        Optional[str],
        typer.Argument(help="Preset (dataset) name: cub, oxford, celeba-tiny, coco, shapes or tiny (default: shapes)."),
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    device: DeviceOpt = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", help="Output folder (damsm.out) [default: <train.runs_dir>/damsm-<data.name>, "
                     "where the dmgan family looks]."),
    ] = None,
    restart: Annotated[
        bool,
        typer.Option("--restart", help="Start over, discarding the checkpoint in the output folder "
                     "(by default a rerun continues from it)."),
    ] = False,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print the resolved config as YAML and exit.")
    ] = False,
) -> None:
    """Pretrain AttnGAN's DAMSM text and image encoders (the dmgan family's text encoder) on a prepared dataset.

    Settings: the damsm.* config keys (e.g. --set damsm.max_minutes=5, damsm.image_encoder=cnn).
    Rerunning the same command continues from the folder's checkpoint; at the end the encoders
    are saved with their held-out DAMSM R-precision and recall@1.
    """
    from ratlip_cli.pretrain_text import run_pretrain_text_command

    run_pretrain_text_command(preset, config, sets, device, out, restart, print_config)


@app.command(epilog=refusals.epilog("sample"))
@friendly
def sample(
    ctx: typer.Context,
    prompts: Annotated[
        Optional[list[str]],
        typer.Argument(metavar="PROMPT", help="One or more prompts; each becomes a row of the grid.", show_default=False),
    ] = None,
    run: Annotated[
        Optional[Path],
        typer.Option("--run", help="A run directory (runs/NAME) whose export/generator.safetensors to use."),
    ] = None,
    weights: Annotated[
        Optional[Path],
        typer.Option("--weights", help="An exported generator .safetensors file (its .json config beside it)."),
    ] = None,
    runs_dir: Annotated[
        Path,
        typer.Option("--runs-dir", help="Where to look for the most recent run when neither --run nor --weights is given."),
    ] = Path("runs"),
    n: Annotated[int, typer.Option("--n", help="Images per prompt (columns of the grid).")] = 8,
    seed: Annotated[
        int,
        typer.Option("--seed", help="Base seed; with the same prompt and weights it gives the same pixels."),
    ] = 0,
    out: Annotated[
        Path, typer.Option("--out", help="Grid image to write; .png, .jpg/.jpeg or .webp by extension.")
    ] = Path("grid.png"),
    prompts_file: Annotated[
        Optional[Path],
        typer.Option(
            "--prompts-file",
            help="A UTF-8 text file of prompts, one per line (blank lines and # comments skipped), after any PROMPTs.",
        ),
    ] = None,
    save_individual: Annotated[
        Optional[Path],
        typer.Option("--save-individual", help="Also write every image as its own PNG, plus seeds.csv, into this folder "
                     "(at the generator's own size, pixels exact, whatever --display-size says)."),
    ] = None,
    display_size: Annotated[
        int,
        typer.Option("--display-size", help="In the grid, enlarge images smaller than this many pixels by a whole "
                     "factor, nearest neighbour (32 px -> 128 px at the default); 0 keeps their own size."),
    ] = 128,
    device: DeviceOpt = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Images per generator call; does not change the images.")
    ] = 16,
    interpolate: Annotated[
        Optional[tuple[str, str]],
        typer.Option(
            "--interpolate",
            metavar="A B",
            help="Instead of PROMPTs: one row walking linearly from prompt A's sentence embedding to B's.",
        ),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", help="Images in the --interpolate row (at least 2).")] = 8,
    vary_noise: Annotated[
        Optional[bool],
        typer.Option(
            "--vary-noise/--fixed-noise",
            help="Prompt rows: --vary-noise (default) gives every image its own noise from (seed, prompt, column); "
            "--fixed-noise gives column j the same noise in every row, to compare prompts. "
            "--interpolate: one fixed noise across the row by default; --vary-noise gives each step its own.",
            show_default=False,
        ),
    ] = None,
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="fp64: pixels independent of --batch-size and of the other prompts; "
            "fp32: faster (about 3x on CPU), but batch sizes may move a few pixels by one level.",
        ),
    ] = "fp64",
    generator: Annotated[
        Optional[str],
        typer.Option(
            "--generator",
            help="ema (the moving average) or raw (the trained weights); default: the run's eval.generator "
            "(raw for the paper presets cub, oxford, celeba-tiny, coco; ema otherwise).",
        ),
    ] = None,
    all_stages: Annotated[
        bool,
        typer.Option("--all-stages", help="Multi-stage generators (model.family=dmgan): one row per stage "
                     "for every prompt (earlier stages upsampled to the last size); default: the last stage only."),
    ] = False,
) -> None:
    """Generate captioned image grids from prompts with a trained run's generator (EMA or raw).

    Example: ratlip sample "a big red circle on a blue background" "a small green square on a gray background" --n 8
    """
    from ratlip_cli.sample import SampleOptions, run_sample

    refusals.check("sample", ctx)
    run_sample(
        SampleOptions(
            prompts=list(prompts or []),
            prompts_file=prompts_file,
            run=run,
            weights=weights,
            runs_dir=runs_dir,
            n=n,
            seed=seed,
            out=out,
            save_individual=save_individual,
            display_size=display_size,
            device=device,
            batch_size=batch_size,
            interpolate=tuple(interpolate) if interpolate else None,
            steps=steps,
            vary_noise=vary_noise,
            precision=precision,
            generator=generator,
            all_stages=all_stages,
        )
    )


@app.command(epilog=refusals.epilog("gradcam"))
@friendly
def gradcam(
    captions: Annotated[
        Optional[list[str]],
        typer.Argument(metavar="CAPTION", help="One or more captions; each becomes a column pair (image, Grad-CAM overlay).",
                       show_default=False),
    ] = None,
    runs: Annotated[
        Optional[list[Path]],
        typer.Option("--run", help="A run folder with an export (runs/NAME); repeat for more rows (e.g. one per h).",
                     show_default=False),
    ] = None,
    labels: Annotated[
        Optional[list[str]],
        typer.Option("--label", help="Row label, one per --run in the same order [default: the run's name and h].",
                     show_default=False),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Figure to write (PNG).")] = Path("gradcam.png"),
    seed: Annotated[
        int, typer.Option("--seed", help="Noise seed: caption j gets the same noise in every row (seeds.caption_noise).")
    ] = 0,
    generator: Annotated[
        Optional[str],
        typer.Option("--generator", help="ema or raw; default: each run's eval.generator."),
    ] = None,
    device: DeviceOpt = None,
    sets: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="An eval.* key for the maps, e.g. --set eval.gradcam_block=-2 or "
                     "--set eval.clip_weights=FILE (repeatable; applied to the first run's config).",
                     show_default=False),
    ] = None,
) -> None:
    """Grad-CAM heat maps over generated images: where the evaluation CLIP finds each caption (the paper's Figure 3).

    One figure: rows = runs, columns = captions, the image and its overlay side by side. Target and layer: eval.gradcam_target (clip: the evaluation CLIP's image-caption cosine) at eval.gradcam_block (the token grid entering that ViT block; -1 = the last). Guide: docs/evaluation.md.

    Example: ratlip gradcam --run runs/ablate-shapes/h0-s0 --run runs/ablate-shapes/h64-s0 "a big red circle on a blue background" "a small green square on a gray background"
    """
    from ratlip_cli.gradcam import GradcamOptions, run_gradcam

    refusals.check_keys("gradcam", refusals.set_keys(sets))
    run_gradcam(GradcamOptions(runs=list(runs or []), captions=list(captions or []), labels=list(labels or []),
                               out=out, seed=seed, device=device, generator=generator, sets=list(sets or [])))


@app.command(name="eval", epilog=refusals.epilog("eval"))
@friendly
def eval_(
    ctx: typer.Context,
    run: Annotated[
        Optional[Path],
        typer.Option("--run", help="Run mode: a run folder (runs/NAME); images come from its exported EMA generator."),
    ] = None,
    images: Annotated[
        Optional[Path], typer.Option("--images", help="Folder mode: a folder of images made by any system.")
    ] = None,
    captions: Annotated[
        Optional[Path],
        typer.Option("--captions", help="Folder mode: a CSV with header `file,caption` (file relative to --images)."),
    ] = None,
    dataset: Annotated[
        Optional[Path],
        typer.Option(
            "--dataset",
            help="Prepared dataset whose split is the reference (run mode default: the run's data.root).",
        ),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Reference split of --dataset.")] = "test",
    num: Annotated[
        Optional[int], typer.Option("--num", help="Quick run: this many images instead of full passes (eval.num).")
    ] = None,
    passes: Annotated[
        Optional[int],
        typer.Option("--passes", help="Passes over the split's images, one caption each (eval.passes; paper: 12)."),
    ] = None,
    batch_size: Annotated[
        Optional[int], typer.Option("--batch-size", help="Images per generator / feature batch (eval.batch_size).")
    ] = None,
    generator: Annotated[
        Optional[str],
        typer.Option(
            "--generator",
            help="Run mode: ema (the moving average) or raw (the trained weights, what GALIP and RATLIP evaluate) "
            "(eval.generator; default: the run's, raw for the paper presets cub, oxford, celeba-tiny, coco).",
        ),
    ] = None,
    device: DeviceOpt = None,
    inception: Annotated[
        Optional[str],
        typer.Option(
            "--inception",
            help="Local clean-fid Inception file inception-2015-12-05.pt (eval.inception; else $RATLIP_INCEPTION, "
            "/tmp, or clean-fid's download when online).",
        ),
    ] = None,
    feature_extractor: Annotated[
        Optional[str],
        typer.Option(
            "--feature-extractor",
            help="inception (FID) or random-tiny (tests only: its numbers are NOT FID) (eval.feature_extractor).",
        ),
    ] = None,
    protocol: Annotated[
        Optional[str],
        typer.Option(
            "--protocol",
            help="clean-fid (default: clean-fid's resize and Inception on uint8 images vs the split's statistics) or "
            "galip (the GALIP/RATLIP release's calculate_FID_CLIP_sim: its resize, Inception input, CLIP input, "
            "caption plan and noise; docs/evaluation.md) (eval.protocol).",
        ),
    ] = None,
    ref_stats: Annotated[
        Optional[Path],
        typer.Option(
            "--ref-stats",
            help="An .npz with mu and sigma (e.g. the authors' bird_val256_FIDK0.npz): FID against it instead of "
            "the split's statistics (eval.ref_stats).",
        ),
    ] = None,
    metrics: Annotated[
        Optional[str],
        typer.Option(
            "--metrics",
            help="Comma list of fid, kid, cs (CLIP score), rp (CLIP R-precision), is (Inception Score), prdc "
            "(precision/recall k=3, density/coverage k=5), or all; default clean-fid: fid,kid,cs,rp; galip: "
            "fid,cs,is,prdc (eval.metrics).",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of captions, noise, KID subsets and R-precision candidates.")
    ] = 0,
    ref_size: Annotated[
        int,
        typer.Option("--ref-size", help="Side the reference images are resized to; 0: the evaluated images' size."),
    ] = 0,
    save_images: Annotated[
        Optional[Path],
        typer.Option("--save-images", help="Run mode: also write the generated images and captions.csv here."),
    ] = None,
    out_csv: Annotated[
        Optional[Path],
        typer.Option("--out-csv", help="Append the result row to this CSV (run mode default: runs/NAME/eval.csv)."),
    ] = None,
    preset: Annotated[
        Optional[str], typer.Option("--preset", help="Folder mode: preset whose eval settings to use.")
    ] = None,
    checkpoints: Annotated[
        str,
        typer.Option(
            "--checkpoints",
            help="Run mode: what to score: export (the run's exported generator), last (the newest checkpoint), "
            "all (every retained checkpoint: one row each, with its step) or best (all, then the lowest-FID "
            "checkpoint's generators are exported to runs/NAME/export-best/ with selected.json naming the "
            "metric, protocol and value that chose it).",
        ),
    ] = "export",
    config: ConfigOpt = None,
    sets: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Compute FID, KID, CLIP score, CLIP R-precision, Inception Score and precision/recall/density/coverage
    for a run or a folder of images, under ratlip's protocol (clean-fid) or the release's (galip).

    Examples: ratlip eval --run runs/cub --inception ~/inception-2015-12-05.pt;
    ratlip eval --run runs/cub --protocol galip --ref-stats bird_val256_FIDK0.npz --inception inception_v3_google-0cc3c7bd.pth;
    ratlip eval --images out/ --captions out/captions.csv --dataset data/cub --out-csv scores.csv
    """
    from ratlip_cli.config import parse_override
    from ratlip_cli.evaluate import EvalOptions, run_eval_command

    refusals.check("eval", ctx)
    mode = "run" if run is not None else "folder"
    refusals.check_keys("eval", refusals.set_keys(sets), mode)
    refusals.check_keys("eval", refusals.config_file_keys(config) if run is None else [], mode, source="--config")
    settings: dict = {}
    if run is not None and (preset or config):
        raise RatlipError("--preset/--config are for folder mode; run mode reads runs/NAME/config.yaml (use --set)")
    for text in sets or []:
        key, value = parse_override(text)
        settings[key] = value
    explicit = {
        "eval.num": num,
        "eval.passes": passes,
        "eval.batch_size": batch_size,
        "eval.inception": inception,
        "eval.feature_extractor": feature_extractor,
        "eval.generator": generator,
        "eval.protocol": protocol,
        "eval.ref_stats": str(ref_stats) if ref_stats is not None else None,
        "eval.metrics": metrics,
    }
    if generator is not None and run is None:
        raise RatlipError("--generator is for run mode (--run runs/NAME); folder mode scores given images")
    if checkpoints != "export" and run is None:
        raise RatlipError("--checkpoints is for run mode (--run runs/NAME); folder mode scores given images")
    settings.update({k: v for k, v in explicit.items() if v is not None})
    opts = EvalOptions(
        dataset=str(dataset) if dataset else None,
        split=split,
        device=device,
        seed=seed,
        ref_size=ref_size,
        save_images=save_images,
        out_csv=out_csv,
        progress=not quiet,
        checkpoints=checkpoints,
    )
    if checkpoints != "export":
        from ratlip_cli.eval_checkpoints import score_checkpoints

        score_checkpoints(run, settings, opts, as_json)
        return
    run_eval_command(
        run, images, captions, settings, opts,
        base_cfg=_resolve(preset, config, None) if run is None else None,
        as_json=as_json,
    )


@app.command(epilog=refusals.epilog("ablate"))
@friendly
def ablate(
    ctx: typer.Context,
    targets: Annotated[
        Optional[list[str]],
        typer.Argument(
            metavar="PRESET",
            help="Preset to sweep: cub, oxford, celeba-tiny, coco, shapes or tiny (default: shapes); "
            "with --merge: the ablation folders to join.",
            show_default=False,
        ),
    ] = None,
    hidden: Annotated[
        Optional[str],
        typer.Option("--hidden", help="Comma-separated RAT hidden sizes h to sweep; 0 is RATLIP without RAT (plain "
                     "affines, no recurrence). Shorthand for --sweep model.rat.hidden=... [default: 0,4,8,16,32,64,128 "
                     "when --sweep is not given].", show_default=False),
    ] = None,
    sweep: Annotated[
        Optional[str],
        typer.Option("--sweep", help="KEY=V1,V2,...: sweep any one config key instead of h, e.g. "
                     "train.lr_g=0.0001,0.0002 or model.family=ratlip,galip (one run per value and seed).",
                     show_default=False),
    ] = None,
    seeds: Annotated[
        str,
        typer.Option("--seeds", help="Comma-separated training seeds: one run per (value, seed); the table shows mean ± std."),
    ] = "0",
    steps: Annotated[
        Optional[int], typer.Option("--steps", help="Budget: train every run for N steps (train.max_steps).")
    ] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Budget: N epochs per run (train.epochs).")] = None,
    minutes: Annotated[
        Optional[float],
        typer.Option("--minutes", help="Budget: M minutes of training per run (train.max_minutes; not reproducible)."),
    ] = None,
    metrics: Annotated[
        Optional[str],
        typer.Option(
            "--metrics",
            help="Comma-separated: cs (CLIP score), fid, kid, rp (CLIP R-precision), shapes (the shapes "
            "checker's match rates; shapes dataset only) [default: cs,fid,kid,rp].",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            help="Ablation folder (sweep.yaml, ablation.csv, ablation.png, one run folder per value and seed) "
            "[default: runs/ablate-PRESET, runs/ablate-PRESET-shard-I-of-N with --shard].",
            show_default=False,
        ),
    ] = None,
    shard: Annotated[
        Optional[str],
        typer.Option("--shard", help="i/n: run every n-th (value, seed) cell starting at the i-th, to share a sweep across n machines."),
    ] = None,
    params_only: Annotated[
        bool,
        typer.Option("--params-only", help="Print the parameter counts per h (Table II's parameter column) and exit; no training."),
    ] = False,
    merge: Annotated[
        bool,
        typer.Option("--merge", help="Join the ablation folders given as arguments (shards of one sweep) into --out."),
    ] = False,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    eval_num: Annotated[
        Optional[int], typer.Option("--eval-num", help="Evaluate every run on N images (eval.num) instead of full passes.")
    ] = None,
    device: DeviceOpt = None,
    feature_extractor: Annotated[
        Optional[str],
        typer.Option(
            "--feature-extractor",
            help="inception (FID) or random-tiny (tests only: its numbers are NOT FID) (eval.feature_extractor).",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No evaluation progress bars.")] = False,
    shuffle_attention: Annotated[
        Optional[str],
        typer.Option("--shuffle-attention", help="true, false or true,false: crossed with the swept values "
                     "(model.shuffle_attention; false = Conv_shuffle without its shuffle attention layers). "
                     "--hidden 0,64 --shuffle-attention true,false is the 2 x 2 RAT/SA ablation "
                     "[default: the config's, true = the authors' network].", show_default=False),
    ] = None,
    gradcam: Annotated[
        bool,
        typer.Option("--gradcam", help="After the cells: OUT/gradcam.png (Grad-CAM of every cell on test captions) "
                     "and, on shapes, the Grad-CAM mass inside the checker's object per row (trains nothing; "
                     "eval.gradcam_target, eval.gradcam_block)."),
    ] = False,
) -> None:
    """Sweep one config key (by default the RAT hidden size h, the paper's Table II) as one resumable command.

    Trains one model per (value, seed) with everything else equal, evaluates it with `ratlip eval`'s code, and writes OUT/ablation.csv, OUT/ablation.png and a Rich table. Re-run the same command to resume; other settings are refused. Guide: docs/ablation.md.

    Examples: ratlip ablate shapes --hidden 0,16,64 --steps 600 --metrics shapes;  ratlip ablate shapes --sweep model.family=ratlip,galip --set model.rat.hidden=0 --steps 600 --metrics shapes;  ratlip ablate shapes --hidden 0,64 --shuffle-attention true,false --seeds 0,1,2 --steps 600 --metrics shapes --gradcam;  ratlip ablate cub --params-only;  ratlip ablate --merge runs/ablate-cub-shard-1-of-2 runs/ablate-cub-shard-2-of-2
    """
    from ratlip_cli.ablate import AblateOptions, run_ablate_command

    refusals.check("ablate", ctx)
    targets = list(targets or [])
    if not merge and len(targets) > 1:
        raise RatlipError(f"give one preset, not {len(targets)} ({' '.join(targets)}); to join ablation folders add --merge")
    opts = AblateOptions(
        preset=None if merge or not targets else targets[0],
        config=config,
        sets=list(sets or []),
        hiddens=hidden,
        sweep=sweep,
        seeds=seeds,
        steps=steps,
        epochs=epochs,
        minutes=minutes,
        metrics=metrics,
        out=out,
        shard=shard,
        eval_num=eval_num,
        device=device,
        feature_extractor=feature_extractor,
        progress=not quiet,
        shuffle_attention=shuffle_attention,
        gradcam=gradcam,
    )
    code = run_ablate_command(opts, merge=[Path(t) for t in targets] if merge else None, only_params=params_only)
    if code:
        raise typer.Exit(code)


@app.command(epilog=refusals.epilog("bench"))
@friendly
def bench(
    ctx: typer.Context,
    preset: Annotated[
        str, typer.Argument(help="Preset whose model to measure (cub = the paper configuration; tiny runs in seconds).")
    ] = "cub",
    hidden: Annotated[
        Optional[str],
        typer.Option("--hidden", help="RAT hidden sizes to compare, comma-separated [default: 0 and the preset's h, e.g. 0,64]."),
    ] = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Generator batch sizes, comma-separated.")] = "1,8",
    precision: Annotated[
        str, typer.Option("--precision", help="Precisions, comma-separated: fp32, bf16 (autocast), fp16 (autocast; CUDA).")
    ] = "fp32,bf16",
    device: DeviceOpt = None,
    compile_: Annotated[
        bool, typer.Option("--compile", help="Time the generator under torch.compile (FLOPs and quality from eager).")
    ] = False,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Also write every column of every row to this CSV file.")] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs per setting (the median is reported).")] = 3,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs before the timed ones.")] = 1,
    sets: SetOpt = None,
    train_batch_size: Annotated[
        int, typer.Option("--train-batch-size", min=2, help="Batch size of the timed training step.")
    ] = 4,
    skip_train: Annotated[bool, typer.Option("--skip-train", help="Time the generator only.")] = False,
    threads: Annotated[
        Optional[int], typer.Option("--threads", min=1, help="CPU threads (torch.set_num_threads) [default: torch's].")
    ] = None,
    tune_malloc: Annotated[
        bool,
        typer.Option(
            "--tune-malloc/--no-tune-malloc",
            help="CPU: keep freed memory in glibc's heap instead of an mmap + page faults per large tensor.",
        ),
    ] = True,
) -> None:
    """Measure generator and training-step speed, memory, FLOPs, roofline ratio and bf16 quality.

    Every setting (h x precision x batch size) runs in this one process, one after another: compare rows of one run.

    Random CLIP weights (speed does not depend on them). Columns and reference figures: docs/benchmarks.md.

    Example: ratlip bench cub --hidden 0,64 --batch-sizes 1,8 --precision fp32,bf16 --csv bench.csv
    """
    from ratlip_cli.bench import BenchOptions, run_bench
    from ratlip_cli.options import parse_int_list

    refusals.check("bench", ctx)
    refusals.check_keys("bench", refusals.set_keys(sets))
    run_bench(
        BenchOptions(
            preset=preset,
            hiddens=parse_int_list(hidden, "--hidden") if hidden is not None else None,
            batch_sizes=parse_int_list(batch_sizes, "--batch-sizes", minimum=1) if batch_sizes is not None else [],
            precisions=[p.strip() for p in precision.split(",") if p.strip()],
            device=device,
            compile=compile_,
            csv=csv,
            repeats=repeats,
            warmup=warmup,
            sets=list(sets or []),
            train_batch_size=train_batch_size,
            skip_train=skip_train,
            threads=threads,
            tune_malloc=tune_malloc,
        )
    )


@app.command()
@friendly
def report(
    folder: Annotated[
        Path,
        typer.Argument(help="A run folder (runs/NAME) or an ablation folder (runs/ablate-PRESET).", show_default=False),
    ],
    out: Annotated[
        Optional[Path],
        typer.Option("--out", help="HTML file to write [default: FOLDER/report.html].", show_default=False),
    ] = None,
    max_grids: Annotated[
        int,
        typer.Option("--max-grids", min=0, help="Run folders: at most this many sample grids, evenly spread over the run."),
    ] = 12,
) -> None:
    """Write one self-contained HTML page (plots and images inline, nothing from the network) for a run or an ablation.

    Run: loss and metric curves, sample grids over time, evaluations, resolved config, environment.
    Ablation: the table and plot (mean ± std over seeds), every cell, the sweep spec, environment.
    """
    from ratlip_cli.report import write_report

    write_report(folder, out, max_grids)


@app.command()
@friendly
def demo(
    run: Annotated[
        Optional[Path],
        typer.Argument(help="A run folder (runs/NAME) to select first; default: the newest run under --runs-dir.",
                       show_default=False),
    ] = None,
    runs_dir: Annotated[
        Path, typer.Option("--runs-dir", help="The page offers every run with an export under this folder.")
    ] = Path("runs"),
    host: Annotated[
        str, typer.Option("--host", help="Address to serve on; 127.0.0.1 keeps the page on this machine.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to serve on.")] = 7860,
    device: DeviceOpt = None,
    share: Annotated[
        bool, typer.Option("--share", help="Also ask Gradio for a public link (needs internet).")
    ] = False,
) -> None:
    """Serve a local web page (Gradio) to draw grids from prompts: choose the run, seed, number of images
    and generator (EMA or raw); it shows the grid, each column's noise seed and the `ratlip sample`
    command that reproduces it pixel for pixel. Needs the extra: pip install -e ".[demo]".

    Example: ratlip demo runs/shapes
    """
    from ratlip_cli.demo import DemoOptions, run_demo

    run_demo(DemoOptions(run=run, runs_dir=runs_dir, host=host, port=port, device=device, share=share))


@app.command(name="import")
@friendly
def import_(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="A GALIP or RATLIP release checkpoint (state_dict.pth holding netG, netD and netC).",
            show_default=False,
        ),
    ],
    preset: Annotated[
        Optional[str],
        typer.Option("--preset", help="The preset the release was trained at (cub, coco, oxford, celeba-tiny, ...)."),
    ] = "cub",
    name: Annotated[
        Optional[str], typer.Option("--name", help="Run name: the run folder is runs/NAME (train.runs_dir/NAME).")
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Turn a released GALIP/RATLIP checkpoint into a ratlip run (config, export, step-0 checkpoint).

    model.family, model.rat.mode and model.rat.hidden are read from the file; the rest comes from the
    preset (the release's CLIP is OpenAI ViT-B/32: pass it with --set clip.weights=FILE offline).
    Then `ratlip sample --run runs/NAME`, `ratlip eval --run runs/NAME` and
    `ratlip train --resume runs/NAME` work on it.

    Example: ratlip import GALIP_CUB/state_dict.pth --preset cub --name galip-cub
    """
    from ratlip_cli.models.registry import get_family
    from ratlip_cli.train.imported import import_release_run

    # GALIP's and RATLIP's files are both read by the RATLIP family package (GALIP's shares its code).
    import_release_run(get_family("ratlip"), checkpoint, preset, config, list(sets or []), name)


def main() -> None:
    """Console-script entry point."""
    app()
