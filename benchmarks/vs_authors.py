"""ratlip against the authors' own code: generator and training step, same device, inputs and batch.

    git --git-dir=<fetched RATLIP.git> archive HEAD | tar -x -C /tmp/ratlip-ref   # OxygenLu/RATLIP (MIT)
    pip download --no-deps fightingcv-attention==1.0.0 && tar xzf fightingcv_attention-1.0.0.tar.gz
    python benchmarks/vs_authors.py --authors /tmp/ratlip-ref --fightingcv fightingcv_attention-1.0.0
    python benchmarks/vs_authors.py --authors /tmp/galip-ref --family galip     # tobran/GALIP
    python benchmarks/vs_authors.py ... --device cuda --batch 64 --ngf 64 --image-size 224 --clip-arch ViT-B-32-quickgelu  # a GPU

The authors' code is loaded at run time from the checkout, as tools/make_reference_fixtures.py does
(nothing of theirs is in this project): `code/models/RATLIP.py` (or `GALIP.py`) with its hard-coded
CLIP sizes replaced by the tiny CLIP's (`tools/make_reference_fixtures.load_reference`, each
replacement counted), and `code/lib/modules.py`, whose `train()` is their training loop body (D step
with MA-GP, G step), run on a one-batch "data loader". In `modules.py` one expression is replaced,
`torch.ones(out.size()).cuda()` (MA-GP's grad_outputs; `.cuda()` cannot run on a CPU) by
`torch.ones_like(out)`; their progress bar is silenced; the training-only imports (`lib.utils`,
`models.inception`, OpenAI's `clip` package) are stubs, `lib/datasets.py` is theirs.

Both sides get the same frozen CLIP (default a random `ratlip-ref-tiny`: width 16, 12 blocks, 28 px input;
their CLIP wrappers read it through an OpenAI-clip-shaped shim), the same weights (theirs, copied
into ratlip's networks by the release importer: the generators' fp32 outputs are compared and the
difference printed), the same noise, sentence embeddings, images and tokens, in one process.
Timings alternate run by run (ours, theirs, then theirs, ours, ...), so the ratio of each round is
measured under the same machine load; the table gives medians and the median of those ratios.

Precisions: fp32 on both sides; on CUDA also their fp16 recipe (`mixed_precision=True`: autocast
fp16 inside their networks, two GradScalers) against ratlip's bf16 (`train.precision=amp_bf16`).
Their fp16 recipe cannot run on a CPU (`torch.cuda.amp` autocast and GradScaler), so on CPU only the
fp32 pair runs. Their generator at inference runs with `eval=True` (no autocast, as their sampler);
the fp16 generator row uses `eval=False` (their training forward) under `torch.no_grad`.

Peak memory: what one extra call needs on top of what is resident (both sides' weights and
optimiser states): CUDA max allocated, or on CPU the resident set (sampled every 2 ms,
`ratlip_cli.bench.MemoryMeter`), minus its value before the call.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import importlib.util
import json
import math
import statistics
import sys
import tempfile
import time
import types
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
CLIP_ARCH = "ratlip-ref-tiny"  # the default frozen CLIP; --clip-arch ViT-B-32-quickgelu is the paper's
CAPTION = "a small bird with a red head and a short beak"


def _tool():
    """tools/make_reference_fixtures.py as a module (its reference loader and OpenAI-clip shims)."""
    spec = importlib.util.spec_from_file_location("make_reference_fixtures", ROOT / "tools" / "make_reference_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------- OpenAI-clip shims


class _TextBlock(nn.Module):
    """An open_clip (batch-first) text block called with (L, N, D) tokens and the causal mask."""

    def __init__(self, block: nn.Module, mask: torch.Tensor) -> None:
        super().__init__()
        self.block = block
        self.mlp = block.mlp  # what their CLIP_TXT_ENCODER.dtype reads
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x.transpose(0, 1), attn_mask=self.mask.to(x.dtype)).transpose(0, 1)


class _TextTransformer(nn.Module):
    def __init__(self, transformer: nn.Module, mask: torch.Tensor) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_TextBlock(b, mask) for b in transformer.resblocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


def shim_clip(tool, clip_model: nn.Module) -> nn.Module:
    """open_clip's CLIP with OpenAI clip's attribute names and (L, N, D) blocks, both towers."""
    shim = tool.ShimCLIP(clip_model)
    shim.transformer = _TextTransformer(clip_model.transformer, clip_model.attn_mask)
    shim.vocab_size = clip_model.vocab_size
    shim.token_embedding = clip_model.token_embedding
    shim.positional_embedding = clip_model.positional_embedding
    shim.ln_final = clip_model.ln_final
    shim.text_projection = clip_model.text_projection
    return shim


# --------------------------------------------------------------------------------- their code


def _stub_modules() -> None:
    """The training-only imports of their lib/modules.py and lib/datasets.py."""

    lib = sys.modules.get("lib") or types.ModuleType("lib")
    lib.__path__ = []
    utils = sys.modules.get("lib.utils") or types.ModuleType("lib.utils")
    utils.dummy_context_mgr = contextlib.nullcontext
    utils.transf_to_CLIP_input = None
    utils.mkdir_p = lambda path: Path(path).mkdir(parents=True, exist_ok=True)
    utils.get_rank = lambda: 0
    models = types.ModuleType("models")
    models.__path__ = []
    inception = types.ModuleType("models.inception")
    inception.InceptionV3 = None  # their FID test only
    clip = types.ModuleType("clip")  # OpenAI's clip package: only its tokenizer, unused here
    sys.modules.update({"lib": lib, "lib.utils": utils, "models": models, "models.inception": inception, "clip": clip})


def _exec(path: Path, name: str, replace: dict[str, str] | None = None) -> types.ModuleType:
    """Import a file of theirs with each ``replace`` key (which must occur exactly once) replaced."""
    text = path.read_text(encoding="utf-8")
    for old, new in (replace or {}).items():
        found = text.count(old)
        if found != 1:
            raise SystemExit(f"vs_authors: {path}: expected 1 x {old!r}, found {found} (their code changed)")
        text = text.replace(old, new)
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    exec(compile(text, str(path), "exec"), module.__dict__)
    return module


@dataclass
class Authors:
    """Their networks, CLIP wrappers, optimisers and training function for one precision."""

    netG: nn.Module
    netD: nn.Module
    netC: nn.Module
    image_encoder: nn.Module
    text_encoder: nn.Module
    optimizerG: torch.optim.Optimizer
    optimizerD: torch.optim.Optimizer
    scaler_g: Any  # torch.cuda.amp.GradScaler with their fp16 recipe, else None
    scaler_d: Any
    train: Callable
    args: Namespace


def load_authors(checkout: Path, family: str, clip_model: nn.Module, dims: dict[str, Any], device: torch.device,
                 mixed_precision: bool, seed: int) -> Authors:
    """Their NetG/NetD/NetC (random init, seeded), CLIP wrappers, Adam optimisers and `train` as in src/train.py."""
    tool = _tool()
    _stub_modules()
    code = checkout / "code"
    model_file = code / "models" / ("RATLIP.py" if family == "ratlip" else "GALIP.py")
    if not model_file.is_file():
        raise SystemExit(f"vs_authors: {model_file} not found: pass a checkout of OxygenLu/RATLIP or tobran/GALIP")
    width, embed = clip_model.visual.transformer.width, clip_model.visual.output_dim
    # Their NetG(imsize) takes the power of two above the output size (the paper: 256 -> 224 px) and
    # hard-codes the last block's size (224), replaced by ours.
    ref = tool.load_reference(model_file, width, embed, dims["hidden"] or 64, small=True, name=f"authors_{family}",
                              imsize=dims["image_size"], bridge=(dims["code_ch"], dims["mid_ch"]),
                              clip_size=clip_model.visual.image_size[0] if isinstance(clip_model.visual.image_size, tuple)
                              else clip_model.visual.image_size)
    _exec(code / "lib" / "datasets.py", "lib.datasets")
    modules = _exec(code / "lib" / "modules.py", f"authors_modules_{family}",
                    {"grad_outputs=torch.ones(out.size()).cuda(),": "grad_outputs=torch.ones_like(out),"})
    from tqdm import tqdm

    modules.tqdm = functools.partial(tqdm, disable=True)
    shim = shim_clip(tool, clip_model).to(device)
    torch.manual_seed(seed)
    nz, ngf, size = dims["z_dim"], dims["ngf"], 2 ** math.ceil(math.log2(dims["image_size"]))
    netG = ref.NetG(ngf, nz, embed, size, 3, mixed_precision, shim).to(device)
    netD = ref.NetD(ngf, size, 3, mixed_precision).to(device)
    netC = ref.NetC(ngf, embed, mixed_precision).to(device)
    image_encoder = ref.CLIP_IMG_ENCODER(shim).to(device).eval()
    text_encoder = ref.CLIP_TXT_ENCODER(shim).to(device).eval()
    opt_d = torch.optim.Adam(list(netD.parameters()) + list(netC.parameters()), lr=dims["lr_d"], betas=(0.0, 0.9))
    opt_g = torch.optim.Adam(netG.parameters(), lr=dims["lr_g"], betas=(0.0, 0.9))
    scaler_g = scaler_d = None
    if mixed_precision:  # src/train.py: growth_interval from cfg/birds.yml
        scaler_g = torch.cuda.amp.GradScaler(growth_interval=2000)
        scaler_d = torch.cuda.amp.GradScaler(growth_interval=2000)
    args = Namespace(batch_size=dims["batch"], device=device, current_epoch=0, max_epoch=1, z_dim=nz, multi_gpus=False,
                     mixed_precision=mixed_precision, sim_w=dims["sim_w"], scaler_min=64)
    return Authors(netG, netD, netC, image_encoder, text_encoder, opt_g, opt_d, scaler_g, scaler_d, modules.train, args)


def authors_step(a: Authors, data: tuple) -> None:
    """One iteration of their `train()`: D step with MA-GP, then G step."""
    a.train([data], a.netG, a.netD, a.netC, a.text_encoder, a.image_encoder, a.optimizerG, a.optimizerD,
            a.scaler_g, a.scaler_d, a.args)


def release_file(a: Authors, where: Path) -> Path:
    """Their current weights as a release checkpoint ({"model": {netG, netD, netC}}), for ratlip's importer."""
    sd = {k: {n: t for n, t in net.state_dict().items() if ".CLIP_ViT." not in n}
          for k, net in (("netG", a.netG), ("netD", a.netD), ("netC", a.netC))}
    path = where / "authors_state_dict.pth"
    torch.save({"model": sd}, path)
    return path


# --------------------------------------------------------------------------------- ratlip


def build_ours(family: str, dims: dict[str, Any], device: torch.device, precision: str):
    """ratlip's networks and training step at the same sizes (config overrides), and its CLIP model."""
    from ratlip_cli.config import resolve_config
    from ratlip_cli.models.family import RunFiles
    from ratlip_cli.models.registry import get_family

    sets = [
        f"model.family={family}", f"clip.arch={dims['clip_arch']}", "clip.weights=random", f"model.z_dim={dims['z_dim']}",
        f"model.ngf={dims['ngf']}", f"model.image_size={dims['image_size']}", f"data.crop_size={dims['image_size']}",
        f"model.bridge_channels={dims['code_ch']}", f"model.bridge_mid_channels={dims['mid_ch']}",
        "model.bridge_blocks=4", "model.prompt_blocks=[1,2,3,4,5,6,7,8]", "model.d_feature_blocks=[1,4,8]",
        "model.sa_groups=8", "model.mapper_scale=0.1", f"train.precision={precision}", f"train.device={device.type}",
        f"train.lr_g={dims['lr_g']}", f"train.lr_d={dims['lr_d']}", f"train.clip_sim_weight={dims['sim_w']}",
    ]
    sets += ["model.rat.hidden=0"] if family == "galip" else ["model.rat.mode=authors", f"model.rat.hidden={dims['hidden']}"]
    cfg = resolve_config(None, overrides=sets)
    fam = get_family(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        text = fam.text_encoder(cfg, RunFiles(None, seed=0), device)
    nets = fam.build(cfg, text).to(device)
    step = fam.training_step(cfg, nets, device, torch.Generator().manual_seed(5))
    step.train()
    return cfg, nets, step, text.clip_model


def copy_weights(nets, release: Path) -> None:
    """Their weights into ratlip's networks (ratlip_cli.models.ratlip.release)."""
    from ratlip_cli.models.ratlip.release import load_release, read_release_checkpoint

    models = types.SimpleNamespace(generator=nets.trainable["generator"], discriminator=nets.trainable["discriminator"],
                                   head=nets.trainable["head"])
    load_release(models, read_release_checkpoint(release))


# --------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each fn, one call each per round, the order reversed every other round."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[n]()
            _sync(device)
            times[n].append(time.perf_counter() - t0)
    return times


def peak_mb(fn: Callable[[], Any], device: torch.device) -> float:
    """Memory one call of fn needs on top of what is resident (both sides' weights and optimiser
    states): CUDA max allocated, or the CPU resident set, minus its value before the call."""
    from ratlip_cli.bench import MemoryMeter

    with MemoryMeter(device) as mem:
        fn()
    return mem.delta_mb


def row(what: str, precision: str, batch: int, times: dict[str, list[float]], mems: dict[str, float]) -> dict[str, Any]:
    ours, theirs = times["ratlip"], times["authors"]
    ratios = [o / t for o, t in zip(ours, theirs)]
    return {
        "phase": what, "precision": precision, "batch": batch,
        "ratlip_img_s": round(batch / statistics.median(ours), 2),
        "authors_img_s": round(batch / statistics.median(theirs), 2),
        "time_ratio": round(statistics.median(ratios), 3),  # ours / theirs, per round
        "time_ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "ratlip_peak_mb": round(mems["ratlip"], 1), "authors_peak_mb": round(mems["authors"], 1),
        "rounds": len(ratios),
        "ratlip_s": [round(x, 4) for x in ours], "authors_s": [round(x, 4) for x in theirs],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors", type=Path, required=True, help="a checkout (git archive) of OxygenLu/RATLIP or tobran/GALIP")
    p.add_argument("--family", choices=["ratlip", "galip"], default="ratlip")
    p.add_argument("--fightingcv", type=Path, default=None, help="folder holding the fightingcv_attention package (RATLIP)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8, help="images per call, both phases")
    p.add_argument("--ngf", type=int, default=32, help="generator/discriminator width (the paper: 64)")
    p.add_argument("--image-size", type=int, default=64, help="generated image size (the paper: 224; their NetG "
                                                                  "gets the power of two above it, 256)")
    p.add_argument("--clip-arch", default=CLIP_ARCH, help="the frozen CLIP (random weights) of both sides")
    p.add_argument("--hidden", type=int, default=64, help="RAT hidden size (RATLIP)")
    p.add_argument("--rounds", type=int, default=5, help="alternating timed rounds per phase")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--phases", default="generate,train", help="comma-separated: generate, train")
    p.add_argument("--precisions", default="", help="fp32 and/or mixed (their fp16 vs our bf16); default: fp32, "
                                                    "and mixed on CUDA")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = p.parse_args(argv)

    if a.fightingcv is not None:
        sys.path.insert(0, str(a.fightingcv.resolve()))
    if a.family == "ratlip" and importlib.util.find_spec("fightingcv_attention") is None:
        raise SystemExit("vs_authors: their RATLIP.py imports fightingcv_attention: pass --fightingcv DIR "
                         "(pip download --no-deps fightingcv-attention==1.0.0, then untar it)")
    from ratlip_cli.bench import device_name
    from ratlip_cli.console import console
    from ratlip_cli.profiling import tune_cpu_allocator
    from ratlip_cli.weights import register_model_configs

    register_model_configs()
    device = torch.device(a.device)
    if device.type == "cpu":
        tune_cpu_allocator(True)  # as `ratlip train` on CPU; the same process allocator serves both sides
    precisions = [x for x in a.precisions.split(",") if x] or (["fp32", "mixed"] if device.type == "cuda" else ["fp32"])
    if "mixed" in precisions and device.type != "cuda":
        console.print("vs_authors: their fp16 recipe (torch.cuda.amp autocast + GradScaler) cannot run on a CPU: "
                      "mixed skipped")
        precisions.remove("mixed")
    phases = [x for x in a.phases.split(",") if x]
    b = a.batch
    dims = {"z_dim": 100, "ngf": a.ngf, "image_size": a.image_size, "code_ch": 64, "mid_ch": 32, "hidden": a.hidden,
            "lr_g": 1e-4, "lr_d": 4e-4, "sim_w": 4.0, "batch": b, "clip_arch": a.clip_arch}
    console.print(f"vs_authors: {a.family}, {device_name(device)}, torch {torch.__version__}, "
                  f"{torch.get_num_threads()} threads, batch {b}, ngf {a.ngf}, {a.image_size} px, CLIP {a.clip_arch}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in precisions:
            ours_precision = "fp32" if precision == "fp32" else "amp_bf16"
            cfg, nets, step, clip_model = build_ours(a.family, dims, device, ours_precision)
            theirs = load_authors(a.authors, a.family, copy.deepcopy(clip_model).requires_grad_(False), dims, device,
                                  mixed_precision=precision == "mixed", seed=1)
            copy_weights(nets, release_file(theirs, Path(tmp)))
            gen = torch.Generator().manual_seed(2)
            z = torch.randn(b, dims["z_dim"], generator=gen).to(device)
            tokens = nets.text.tokenizer([CAPTION] * b).to(device)
            with torch.no_grad():
                s = nets.text.encode(tokens).float()
            images = (torch.rand(b, 3, a.image_size, a.image_size, generator=gen) * 2 - 1).to(device)

            G = nets.trainable["generator"]
            if "generate" in phases:
                G.eval()
                theirs.netG.eval()
                with torch.no_grad():
                    diff = (G(z, s) - theirs.netG(z, s, eval=True)).abs().max().item()
                console.print(f"  same weights: generator outputs differ by at most {diff:.2e} (fp32, eval)")

                def ours_gen():
                    with torch.inference_mode(), (contextlib.nullcontext() if precision == "fp32"
                                                  else torch.autocast(device.type, dtype=torch.bfloat16)):
                        return G(z, s)

                def theirs_gen():
                    with torch.no_grad():
                        return theirs.netG(z, s, eval=precision == "fp32")

                fns = {"ratlip": ours_gen, "authors": theirs_gen}
                times = alternate(fns, device, a.warmup, a.rounds)
                mems = {k: peak_mb(f, device) for k, f in fns.items()}
                rows.append(row("generate", precision, b, times, mems))
                console.print("  " + json.dumps(rows[-1]), markup=False, highlight=False, soft_wrap=True)
                G.train()
                theirs.netG.train()
            if "train" in phases:
                ours_batch = {"image": images.clone(), "tokens": tokens.cpu()}
                their_data = (images.clone(), [CAPTION] * b, tokens.clone(), [str(i) for i in range(b)])
                fns = {"ratlip": lambda: step(ours_batch), "authors": lambda: authors_step(theirs, their_data)}
                for f in fns.values():  # the first step allocates Adam's state: untimed
                    f()
                times = alternate(fns, device, max(0, a.warmup - 1), a.rounds)
                mems = {k: peak_mb(f, device) for k, f in fns.items()}
                rows.append(row("train step", precision, b, times, mems))
                console.print("  " + json.dumps(rows[-1]), markup=False, highlight=False, soft_wrap=True)
            nets = step = theirs = None  # free this precision's models before the next
            if device.type == "cuda":
                torch.cuda.empty_cache()
    show(rows)
    if a.json:
        a.json.write_text(json.dumps({"device": device_name(device), "torch": torch.__version__,
                                      "threads": torch.get_num_threads(), "args": {k: str(v) for k, v in vars(a).items()},
                                      "rows": rows}, indent=1) + "\n", encoding="utf-8")
    return 0


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as the Markdown table of docs/benchmarks.md."""
    lines = ["| phase | precision | batch | ratlip img/s | authors img/s | time ratio (ratlip / authors) | range | "
             "ratlip MB | authors MB |", "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        prec = r["precision"] if r["precision"] == "fp32" else "bf16 (theirs fp16)"
        lo, hi = r["time_ratio_range"]
        lines.append(f"| {r['phase']} | {prec} | {r['batch']} | {r['ratlip_img_s']} | {r['authors_img_s']} | "
                     f"{r['time_ratio']:.3f} | {lo:.3f}-{hi:.3f} | {r['ratlip_peak_mb']} | {r['authors_peak_mb']} |")
    return "\n".join(lines)


def show(rows: list[dict[str, Any]]) -> None:
    """Print the Markdown table (time ratio = ratlip's time / theirs, median of the alternating rounds)."""
    from ratlip_cli.console import console

    console.print(markdown(rows), markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
