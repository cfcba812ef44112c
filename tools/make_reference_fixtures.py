"""Make the reference fixtures of tests/test_reference.py from the authors' own code.

    git -C /path/to/GALIP.git archive HEAD | tar -x -C /tmp/galip      # tobran/GALIP (MIT)
    git -C /path/to/RATLIP.git archive HEAD | tar -x -C /tmp/ratlip    # OxygenLu/RATLIP (MIT)
    pip download --no-deps fightingcv-attention==1.0.0 && tar xzf fightingcv_attention-1.0.0.tar.gz
    python tools/make_reference_fixtures.py --galip /tmp/galip --ratlip /tmp/ratlip \\
        --fightingcv fightingcv_attention-1.0.0 --out tests/fixtures/reference

What it does, with the reference code unchanged except for the constants of step 2:

1. Builds a tiny random open_clip ViT (`ratlip-ref-tiny`: width 16, 12 blocks, 7x7 token grid,
   embedding 16) and wraps its image tower in a shim with the attribute names of OpenAI's `clip`
   package and sequence-first (L, N, D) transformer blocks, which is what the reference code reads
   (open_clip's blocks are batch-first since 2.26). Its image tower is saved (clip_visual.safetensors).
2. Imports GALIP's `code/models/GALIP.py` and RATLIP's `code/models/RATLIP.py` with their
   hard-coded CLIP sizes (768 width, 512 embedding), last generator size (224), bridge widths
   (64/32) and RAT hidden size (64) replaced by the tiny model's (each replacement must match the
   expected number of times, so a changed reference file fails loudly). The reference
   ShuffleAttention comes from the `fightingcv_attention` package, as in RATLIP's code.
3. Builds their NetG, NetD and NetC with random weights (rounded to float16 values, so the files are
   stored as float16 and load exactly into float32), with random BatchNorm statistics, runs them in
   eval mode in float32 on fixed inputs, and writes weights (in the release's checkpoint layout:
   {"model": {"netG", "netD", "netC"}}), inputs and outputs.
4. Builds the UNPATCHED full-size networks (ViT-B/32 CLIP with random weights, 256 px config of
   cfg/birds.yml) only to count their parameters, for every RAT hidden size of the paper's sweep,
   and writes the counts to ratlip_cli/models/ratlip/release_params.json, which `ratlip ablate --params-only`
   prints beside ratlip's own counts (no full-size weights are written).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import types
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
CLIP_ARCH = "ratlip-ref-tiny"
SEED = 2024
BATCH = 3
# The small networks: z_dim, generator widths (RATLIP's shuffle attention with 8 groups needs 16
# channels at least; GALIP's smaller to keep the files small), image size, bridge widths, RAT hidden size.
NZ, IMSIZE, CODE_CH, MID_CH, HIDDEN = 8, 32, 16, 16, 4
NGF = {"galip": 8, "ratlip": 16}
SWEEP = (4, 8, 16, 32, 64, 128)


def load_reference(path: Path, width: int, embed: int, hidden: int, small: bool, name: str,
                   imsize: int = IMSIZE, bridge: tuple[int, int] = (CODE_CH, MID_CH),
                   clip_size: int = 224) -> types.ModuleType:
    """Import a reference model file with its hard-coded sizes replaced (see step 2 of the module docstring).

    ``imsize`` and ``bridge`` (code_ch, mid_ch) default to the fixtures' small sizes;
    benchmarks/vs_authors.py passes larger ones, and ``clip_size``, the input size of its CLIP image
    encoder (``CLIP_IMG_ENCODER`` resizes to 224 px, which the fixtures do not run)."""
    text = path.read_text(encoding="utf-8")
    if clip_size != 224:
        found = text.count("size=(224, 224)")
        assert found == 1, f"{path}: expected 1 'size=(224, 224)', found {found}"
        text = text.replace("size=(224, 224)", f"size=({clip_size}, {clip_size})")
    is_ratlip = "Affine_rnn" in text
    if is_ratlip:
        count = text.count("hidden_size=64")
        assert count == 1, f"{path}: expected 1 'hidden_size=64', found {count}"
        text = text.replace("hidden_size=64", f"hidden_size={hidden}")
    if small:
        expected = {"768": 9, "512+512": 1, "D_Block(768, 512,": 1, "imsize = 224": 1}
        for old, n in expected.items():
            found = text.count(old)
            assert found == n, f"{path}: expected {n} x {old!r}, found {found}"
        code_line = "self.code_sz, self.code_ch, self.mid_ch = 7, 64, 32"
        assert text.count(code_line) == 1, f"{path}: the bridge width line changed"
        text = text.replace("D_Block(768, 512,", f"D_Block(768, {embed},")
        text = text.replace("768", str(width)).replace("512+512", f"{embed}+{embed}")
        text = text.replace("imsize = 224", f"imsize = {imsize}")
        text = text.replace(code_line, f"self.code_sz, self.code_ch, self.mid_ch = 7, {bridge[0]}, {bridge[1]}")
    module = types.ModuleType(name)
    module.__file__ = str(path)
    exec(compile(text, str(path), "exec"), module.__dict__)
    return module


def install_lib_utils_stub() -> None:
    """The model files import `dummy_context_mgr` from lib.utils, whose other imports (easydict,
    dateutil, ...) are training-only; provide the same no-op context manager."""
    lib = types.ModuleType("lib")
    lib.__path__ = []
    utils = types.ModuleType("lib.utils")

    class dummy_context_mgr:  # noqa: N801 - the reference's name
        def __enter__(self):
            return None

        def __exit__(self, exc_type, exc_value, traceback):
            return False

    utils.dummy_context_mgr = dummy_context_mgr
    sys.modules["lib"] = lib
    sys.modules["lib.utils"] = utils


class SeqFirstBlock(nn.Module):
    """An open_clip (batch-first) ViT block called with OpenAI clip's (L, N, D) tokens."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x.transpose(0, 1)).transpose(0, 1)


class ShimTransformer(nn.Module):
    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.width = transformer.width
        self.resblocks = nn.ModuleList(SeqFirstBlock(b) for b in transformer.resblocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class ShimVisual(nn.Module):
    """open_clip's VisionTransformer seen through OpenAI clip's attribute names."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = visual.ln_pre
        self.transformer = ShimTransformer(visual.transformer)
        self.ln_post = visual.ln_post
        self.proj = visual.proj


class ShimCLIP(nn.Module):
    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.visual = ShimVisual(clip_model.visual)


def fp16_values(t: torch.Tensor) -> torch.Tensor:
    """Round to the nearest float16 value (kept in the tensor's dtype)."""
    return t.half().to(t.dtype)


@torch.no_grad()
def randomize(module: nn.Module, gen: torch.Generator) -> None:
    """Random weights for every trainable tensor and BatchNorm statistics, rounded to float16 values.

    Matrices and kernels: N(0, 1/fan_in) (the generator's last conv N(0, 0.04/fan_in)); vectors and scalars: their initial value + N(0, 0.1)
    (so gates, gains and biases move off their identity initialisation); running variances in [0.5, 2].
    """
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() >= 2:
            fan_in = p[0].numel()
            # to_rgb a fifth as large: images of magnitude ~1, so 1e-5 in the tests is a relative 1e-5.
            scale = 0.2 if name.startswith("to_rgb.") else 1.0
            p.copy_(scale * torch.randn(p.shape, generator=gen) / fan_in**0.5)
        else:
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        p.copy_(fp16_values(p))
    for name, b in module.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(fp16_values(0.1 * torch.randn(b.shape, generator=gen)))
        elif name.endswith("running_var"):
            b.copy_(fp16_values(0.5 + 1.5 * torch.rand(b.shape, generator=gen)))


def trainable_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The release's state_dict minus the frozen CLIP mapper weights (they are stored once, in clip.safetensors)."""
    return {
        k: (v.half() if v.is_floating_point() else v).clone()
        for k, v in net.state_dict().items()
        if ".CLIP_ViT." not in k
    }


def count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def used_count(net_d: nn.Module, width: int) -> int:
    """Parameters of NetD that receive a gradient from a forward on random features (the rest are dead)."""
    feats = torch.randn(1, 3, width, 7, 7)
    net_d.zero_grad(set_to_none=True)
    net_d(feats).sum().backward()
    n = sum(p.numel() for p in net_d.parameters() if p.grad is not None)
    net_d.zero_grad(set_to_none=True)
    return n


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--galip", type=Path, required=True, help="a checkout (git archive) of tobran/GALIP")
    parser.add_argument("--ratlip", type=Path, required=True, help="a checkout (git archive) of OxygenLu/RATLIP")
    parser.add_argument("--fightingcv", type=Path, default=None, help="folder holding the fightingcv_attention package")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "reference")
    parser.add_argument(
        "--params-out", type=Path, default=REPO / "ratlip_cli" / "models" / "ratlip" / "release_params.json",
        help="where the full-size parameter counts go",
    )
    parser.add_argument("--skip-full", action="store_true", help="skip the full-size parameter counts")
    args = parser.parse_args(argv)
    if args.fightingcv is not None:
        sys.path.insert(0, str(args.fightingcv.resolve()))
    sys.path.insert(0, str(REPO))
    import open_clip
    from safetensors.torch import save_file

    from ratlip_cli.weights import register_model_configs

    install_lib_utils_stub()
    register_model_configs()
    galip_file = args.galip / "code" / "models" / "GALIP.py"
    ratlip_file = args.ratlip / "code" / "models" / "RATLIP.py"
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)

    # ---- the tiny CLIP, shared by both references and by ratlip in the tests ----
    clip_model = open_clip.create_model(CLIP_ARCH, pretrained=None).eval()
    with torch.no_grad():
        for p in clip_model.parameters():
            p.copy_(fp16_values(p))
    clip_model.requires_grad_(False)
    width = clip_model.visual.transformer.width
    embed = clip_model.visual.output_dim
    # Only the image tower is stored (the reference networks read nothing else); tests build the
    # text tower randomly.
    visual = {f"visual.{k}": v.half().contiguous() for k, v in clip_model.visual.state_dict().items()}
    save_file(visual, str(out / "clip_visual.safetensors"))
    shim = ShimCLIP(clip_model)

    z = torch.randn(BATCH, NZ, generator=gen)
    s = torch.randn(BATCH, embed, generator=gen)
    feats = torch.randn(BATCH, 3, width, 7, 7, generator=gen)
    tensors = {"z": z, "s": s, "d_features": feats}
    sources = {}
    for tag, path in (("galip", galip_file), ("ratlip", ratlip_file)):
        ref = load_reference(path, width, embed, HIDDEN, small=True, name=f"ref_{tag}")
        sources[tag] = {"file": f"code/models/{path.name}", "sha256": sha256(path)}
        net_g = ref.NetG(NGF[tag], NZ, embed, IMSIZE, 3, False, shim)
        net_d = ref.NetD(NGF[tag], IMSIZE, 3, False)
        net_c = ref.NetC(NGF[tag], embed, False)
        for net in (net_g, net_d, net_c):
            randomize(net, gen)
            net.eval()
        with torch.no_grad():
            tensors[f"{tag}_g"] = net_g(z, s, eval=True)
            tensors[f"{tag}_d"] = net_d(feats)
            tensors[f"{tag}_c"] = net_c(tensors[f"{tag}_d"], s)
        model = {"netG": trainable_state(net_g), "netD": trainable_state(net_d), "netC": trainable_state(net_c)}
        if tag == "ratlip":  # a DistributedDataParallel checkpoint: every key under "module."
            model = {k: {f"module.{n}": v for n, v in sd.items()} for k, sd in model.items()}
        torch.save({"model": model}, out / f"{tag}_state_dict.pth")
        print(f"{tag}: NetG {count(net_g):,} trainable parameters at the small size")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "io.safetensors"))

    meta = {
        "made_by": "tools/make_reference_fixtures.py",
        "sources": sources,
        "clip_arch": CLIP_ARCH,
        "batch": BATCH,
        "replaced_constants": {
            "768 (CLIP width)": width,
            "512 (CLIP embedding, NetD output, NetC input)": embed,
            "imsize = 224 (last generator block)": IMSIZE,
            "code_ch, mid_ch = 64, 32 (bridge)": [CODE_CH, MID_CH],
            "hidden_size=64 (RATLIP's RAT)": HIDDEN,
        },
        "config": {
            "model.z_dim": NZ,
            "model.image_size": IMSIZE,
            "model.bridge_channels": CODE_CH,
            "model.bridge_mid_channels": MID_CH,
            "model.bridge_blocks": 4,
            "model.prompt_blocks": [1, 2, 3, 4, 5, 6, 7, 8],
            "model.d_feature_blocks": [1, 4, 8],
            "model.sa_groups": 8,
            "model.mapper_scale": 0.1,
        },
        "ngf": NGF,
        "ratlip_hidden": HIDDEN,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    if not args.skip_full:
        full_clip = ShimCLIP(open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval().requires_grad_(False))
        counts: dict = {
            "made_by": "tools/make_reference_fixtures.py (reference code unpatched but for hidden_size; "
            "random ViT-B/32 CLIP; counts only)",
            "sources": sources,
            "config": "cfg/birds.yml: imsize 256, nf 64, z_dim 100, cond_dim 512",
            "note": "trainable = parameters with requires_grad (the frozen CLIP excluded); "
            "netD_used = those that receive a gradient (NetD's 768->768 blocks build a 1x1 shortcut they never use)",
        }
        galip = load_reference(galip_file, 768, 512, 64, small=False, name="ref_galip_full")
        g = galip.NetG(64, 100, 512, 256, 3, False, full_clip)
        d = galip.NetD(64, 256, 3, False)
        c = galip.NetC(64, 512, False)
        counts["galip"] = {"netG": count(g), "netD": count(d), "netD_used": used_count(d, 768), "netC": count(c)}
        counts["ratlip"] = {}
        for h in SWEEP:
            ratlip = load_reference(ratlip_file, 768, 512, h, small=False, name=f"ref_ratlip_full_{h}")
            g = ratlip.NetG(64, 100, 512, 256, 3, False, full_clip)
            row = {"netG": count(g)}
            if h == SWEEP[0]:
                d = ratlip.NetD(64, 256, 3, False)
                c = ratlip.NetC(64, 512, False)
                counts["ratlip_d"] = {"netD": count(d), "netD_used": used_count(d, 768), "netC": count(c)}
            counts["ratlip"][str(h)] = row
            print(f"ratlip h={h}: NetG {row['netG']:,}")
        print(f"galip: {counts['galip']}")
        args.params_out.write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
    total = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
