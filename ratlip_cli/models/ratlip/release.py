"""Read the authors' released checkpoints (GALIP and RATLIP) and load them into ratlip's networks
(`ratlip import` then writes the run folder: `ratlip_cli/train/imported.py`).

The release format (GALIP's and RATLIP's `lib/utils.py`, `save_models`): a `torch.save` dict
``{"model": {"netG": ..., "netD": ..., "netC": ...}, "optimizers": ...}`` (a bare
``{"netG", "netD", "netC"}`` dict is accepted too); keys carry a ``module.`` prefix when the
networks were wrapped in DistributedDataParallel. NetG's state also holds the frozen CLIP image
tower of its mapper (``mapping.CLIP_ViT.*``); ratlip takes CLIP from `clip.weights` instead, so
those keys are skipped. NetD's two 768 -> 768 blocks carry a 1x1 shortcut conv that their forward
never uses; ratlip does not build it, so those keys are skipped too. Everything else must map one
to one onto a ratlip network, with the same shapes, or a `RatlipError` says what does not fit.

The family (galip: plain convs; ratlip: Conv_shuffle with BatchNorm and shuffle attention) and the
RAT hidden size of a RATLIP release (its per-layer ``nn.LSTM``, i.e. `model.rat.mode: authors`) are
read from the keys and shapes (`detect_release`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ratlip_cli.errors import RatlipError
from ratlip_cli.models.ratlip.build import build_models
from ratlip_cli.models.trainable import load_trainable_state_dict, trainable_state_dict

NETS = ("netG", "netD", "netC")

# Release NetG key -> ratlip Generator key, applied in order.
_G_RULES: tuple[tuple[str, str], ...] = (
    (r"^mapping\.FBlocks\.", "bridge."),
    (r"^mapping\.conv_fuse\.", "conv_fuse."),
    (r"^mapping\.conv\.", "conv_out."),
    (r"^mapping\.fc_prompt\.", "fc_prompt."),
    (r"^GBlocks\.", "blocks."),
    (r"\.c_sc\.", ".shortcut."),
    (r"\.fc_(gamma|beta)\.linear1\.", r".fc_\1.0."),  # GALIP's Affine names its layers
    (r"\.fc_(gamma|beta)\.linear2\.", r".fc_\1.2."),
    (r"\.se\.cweight$", ".attn.c_weight"),
    (r"\.se\.cbias$", ".attn.c_bias"),
    (r"\.se\.sweight$", ".attn.s_weight"),
    (r"\.se\.sbias$", ".attn.s_bias"),
    (r"\.se\.gn\.", ".attn.norm."),
    (r"\.(conv2|c1|c2)\.(weight|bias)$", r".\1.conv.\2"),  # GALIP's plain convs
)
_D_RULES: tuple[tuple[str, str], ...] = ((r"^DBlocks\.", "blocks."),)
_RNN = re.compile(r"^(?P<affine>.+\.affine[01])\.rnn\.(?P<param>.+)$")


@dataclass
class ReleaseCheckpoint:
    """The three state dicts of a release file (``module.`` prefixes removed) and what they are."""

    netG: dict[str, torch.Tensor]
    netD: dict[str, torch.Tensor]
    netC: dict[str, torch.Tensor]
    family: str
    rat_hidden: int
    path: str = ""


def _strip_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def detect_release(net_g: dict[str, torch.Tensor]) -> tuple[str, int]:
    """(family, RAT hidden size) of a release NetG state dict: ratlip when its convs have BatchNorm."""
    family = "ratlip" if any(".bn.running_mean" in k for k in net_g) else "galip"
    hidden = 0
    for key, value in net_g.items():
        if key.endswith(".rnn.weight_hh_l0"):
            hidden = int(value.shape[1])
            break
    return family, hidden


def read_release_checkpoint(path: str | Path) -> ReleaseCheckpoint:
    """Load a GALIP/RATLIP release file (``torch.load(weights_only=True)``) and check its layout."""
    path = Path(path)
    if not path.is_file():
        raise RatlipError(f"release checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, truncated, or pickled objects beyond tensors
        raise RatlipError(
            f"{path} is not a readable torch checkpoint ({type(exc).__name__}); pass the release's "
            "state_dict.pth (a dict with netG, netD and netC)"
        ) from None
    model = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(model, dict) or not all(isinstance(model.get(n), dict) for n in NETS):
        raise RatlipError(
            f"{path} is not a GALIP/RATLIP release checkpoint: it has no 'model' dict with netG, netD and netC "
            "(a ratlip run is loaded with --resume or `ratlip sample RUN`, not imported)"
        )
    nets = {n: _strip_module(model[n]) for n in NETS}
    if not any(k.startswith("GBlocks.") for k in nets["netG"]) or "main.gamma" not in nets["netD"]:
        raise RatlipError(f"{path}: netG/netD do not have GALIP's layout (GBlocks.*, main.*)")
    family, hidden = detect_release(nets["netG"])
    return ReleaseCheckpoint(nets["netG"], nets["netD"], nets["netC"], family, hidden, str(path))


def _rename(key: str, rules: tuple[tuple[str, str], ...]) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def _fit(kind: str, ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], source: str) -> None:
    """Raise a one-line RatlipError unless `theirs` has exactly `ours`' keys and shapes."""
    missing = sorted(set(ours) - set(theirs))
    extra = sorted(set(theirs) - set(ours))
    shapes = sorted(k for k in set(ours) & set(theirs) if tuple(ours[k].shape) != tuple(theirs[k].shape))
    if not (missing or extra or shapes):
        return
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape(s) differ, e.g. {k}: file {tuple(theirs[k].shape)} vs config {tuple(ours[k].shape)}")
    if missing:
        parts.append(f"{len(missing)} weight(s) missing from the file, e.g. {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} unexpected weight(s), e.g. {extra[0]}")
    raise RatlipError(
        f"{source}: the release {kind} does not fit this config ({'; '.join(parts)}); choose the preset "
        "it was trained with (e.g. --preset cub for 256 px CUB, coco for COCO) and --set model.* to match"
    )


def convert_generator(net_g: dict[str, torch.Tensor], generator: nn.Module) -> dict[str, torch.Tensor]:
    """The release NetG state as a state dict of ratlip's `Generator` (RAT LSTMs to `rat.lstms.<k>`)."""
    rnn_index = {m.trace_name: k for k, m in enumerate(m for m in generator.affine_layers if m.recurrent)}
    out: dict[str, torch.Tensor] = {}
    for key, value in net_g.items():
        if key.startswith("mapping.CLIP_ViT."):
            continue
        new = _rename(key, _G_RULES)
        m = _RNN.match(new)
        if m:
            k = rnn_index.get(m.group("affine"))
            new = f"rat.lstms.{k}.{m.group('param')}" if k is not None else f"{new} (no RAT layer here)"
        out[new] = value
    return out


def convert_discriminator(net_d: dict[str, torch.Tensor], discriminator: nn.Module) -> dict[str, torch.Tensor]:
    """The release NetD state for ratlip's `Discriminator`, without the shortcuts it never uses."""
    ours = discriminator.state_dict()
    out = {}
    for key, value in net_d.items():
        new = _rename(key, _D_RULES)
        if ".conv_s." in new and new not in ours:
            fout, fin = net_d[f"{key.split('.conv_s.')[0]}.conv_r.0.weight"].shape[:2]
            if fin == fout:
                continue  # dead in the release: D_Block only uses conv_s when fin != fout
        out[new] = value
    return out


def load_release(models, release: ReleaseCheckpoint) -> None:
    """Copy a release's NetG, NetD and NetC into `models` (a `RatlipModels`); RatlipError if they do not fit."""
    g = models.generator
    source = release.path or "release checkpoint"
    if g.family != release.family:
        raise RatlipError(
            f"{source}: a {release.family} release cannot load into a model.family={g.family} config; "
            f"--set model.family={release.family}"
        )
    if release.rat_hidden and (g.rat.mode != "authors" or g.rat.hidden != release.rat_hidden):
        raise RatlipError(
            f"{source} holds the authors' RAT with h = {release.rat_hidden}; "
            f"--set model.rat.mode=authors --set model.rat.hidden={release.rat_hidden}"
        )
    pairs = (
        ("NetG", g, convert_generator(release.netG, g)),
        ("NetD", models.discriminator, convert_discriminator(release.netD, models.discriminator)),
        ("NetC", models.head, dict(release.netC)),
    )
    for kind, module, state in pairs:
        _fit(kind, trainable_state_dict(module), state, source)
    for _kind, module, state in pairs:
        load_trainable_state_dict(module, state)


def _check_clip_matches(release: ReleaseCheckpoint, clip_model: nn.Module) -> bool:
    """Whether the CLIP weights inside the release's NetG (its mapper's) equal the loaded CLIP's."""
    visual = clip_model.visual
    pairs = (("mapping.CLIP_ViT.conv1.weight", visual.conv1.weight),
             ("mapping.CLIP_ViT.positional_embedding", visual.positional_embedding))
    for key, ours in pairs:
        theirs = release.netG.get(key)
        if theirs is None:
            continue
        if tuple(theirs.shape) != tuple(ours.shape) or not torch.allclose(theirs.float(), ours.detach().float().cpu(), atol=1e-3):
            return False
    return True


def release_settings(release: ReleaseCheckpoint) -> list[str]:
    """The `--set` overrides a release implies: its family and its RAT (`detect_release`)."""
    inferred = [f"model.family={release.family}", f"model.rat.hidden={release.rat_hidden}"]
    if release.rat_hidden:
        inferred.append("model.rat.mode=authors")
    return inferred


def release_description(release: ReleaseCheckpoint) -> str:
    """What a release is, in words: its family and, for RATLIP, the authors' RAT size."""
    return f"{release.family}" + (f", authors' RAT h = {release.rat_hidden}" if release.rat_hidden else "")


def release_models(cfg, clip_model: nn.Module, release: ReleaseCheckpoint):
    """ratlip's networks for ``cfg`` around ``clip_model`` holding the release's weights, in eval mode,
    and whether the CLIP image tower stored in the release equals ``clip_model``'s."""
    models = build_models(cfg, clip_model)
    load_release(models, release)
    for module in models.modules().values():
        module.eval()
    return models, _check_clip_matches(release, clip_model)
