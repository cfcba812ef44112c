"""The contract between the harness and a model family (RATLIP, GALIP, DM-GAN, ...).

The harness (training loop, checkpoints, EMA, progress, sample, eval, ablate, bench, export) only
ever talks to these types; each family is a package under `ratlip_cli/models/` that implements
`Family` and is listed in `ratlip_cli/models/registry.py` under its `model.family` name. See
docs/architecture.md, "How to add a model family".

    family = get_family(cfg)                       # registry: cfg.model.family -> Family
    text = family.text_encoder(cfg, files)         # frozen text encoder + tokenizer
    nets = family.build(cfg, text)                 # every network, from the config alone
    step = family.training_step(cfg, nets, device, noise)
    out = step(batch)                              # one optimisation step: D and G updates
    images = nets.generator(z, text.encode(tokens))   # what the EMA copy, sample and eval run
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ratlip_cli.config import Config, accumulation
from ratlip_cli.errors import RatlipError


@dataclass
class RunFiles:
    """Where a run keeps the frozen files a family needs to rebuild itself exactly.

    ``folder`` is the run directory (None outside a run, e.g. in `ratlip bench`); ``resuming``
    says whether the files were written by an earlier process of this run; ``main`` whether this
    process is rank 0 (the only one that writes); ``seed`` is `train.seed`. ``in_domain_clip`` is the
    harness's way to the CLIP pretrained on the dataset (`clip.weights=in-domain`): a function of the
    config giving its file, pretrained first where it is missing (model code never starts a pretraining).
    """

    folder: Path | None
    resuming: bool = False
    main: bool = True
    seed: int = 0
    in_domain_clip: Callable[[Config], Path] | None = None


class TextEncoder:
    """A frozen text encoder: captions -> tokens (what the dataset stores) -> the generator's condition.

    ``module`` is the frozen network (shared with the discriminator when the family wants it);
    ``tokenizer(list_of_captions)`` gives a (B, L) token tensor; ``context_length`` is L;
    ``source`` is a JSON-able description an export stores so `load_export` can rebuild it
    (for example the CLIP architecture, weights spec and a saved weights file).
    """

    def __init__(self, module: nn.Module, tokenizer: Callable[[Sequence[str]], torch.Tensor],
                 context_length: int, source: dict[str, Any] | None = None) -> None:
        self.module = module
        self.tokenizer = tokenizer
        self.context_length = int(context_length)
        self.source = dict(source or {})

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def encode(self, tokens: torch.Tensor) -> Any:
        """The generator's text condition for (B, L) tokens, in the encoder's dtype (no grad)."""
        raise NotImplementedError

    def retrieval_scorer(self) -> Any:
        """An extra scorer `ratlip eval` reports R-precision with (``name``, ``embed_images(uint8 HWC
        arrays)``, ``embed_texts(captions)``), e.g. DM-GAN's DAMSM encoders; None (default): none."""
        return None


@dataclass
class Networks:
    """Every network of one family instance.

    ``generator(z, cond)`` maps noise (B, z_dim) and ``text.encode(tokens)`` to images (B, 3, S, S)
    in about [-1, 1] (the sampler clamps); it is what the EMA copy follows and what an export holds.
    ``trainable`` names every module with trained weights (the generator under "generator", then
    discriminators, heads, ...): checkpoints store each under its name.
    """

    text: TextEncoder
    generator: nn.Module
    trainable: dict[str, nn.Module]
    z_dim: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Networks:
        self.text.module.to(device)
        for module in self.trainable.values():
            module.to(device)
        return self


@dataclass
class ReleaseRead:
    """A released checkpoint of a family's authors, read by `Family.read_release`: the `--set`
    overrides it implies (e.g. its family and sizes), what it is in words, and the family's own object."""

    settings: list[str]
    description: str
    checkpoint: Any


@dataclass
class StepOutput:
    """What one optimisation step did.

    ``losses``: the rank-averaged loss vector in the step's ``loss_columns`` order, or None when the
    step was skipped (non-finite losses: no weight changed and the EMA must not move);
    ``overflow``: the skip was a routine fp16 GradScaler overflow rather than a divergence;
    ``skipped``: a step that decided on the device whether it skipped (no host sync) returns its
    losses (non-finite ones included) with this 0-dim bool tensor, true where it skipped as above:
    the loop masks the EMA update with it and reads it, with the losses, only when it logs.
    """

    losses: torch.Tensor | None
    overflow: bool = False
    skipped: torch.Tensor | None = None


class TrainingStep(ABC):
    """One optimisation step of a family: what `train`, `bench` and `ablate` (through `train`) run.

    It owns the optimisers, the GradScaler and the cross-rank averaging of gradients and losses;
    it draws its noise from the ``noise`` generator it was given (the loop checkpoints that RNG).
    """

    #: names of the loss vector's entries, as metrics.csv columns
    loss_columns: tuple[str, ...] = ()

    @property
    @abstractmethod
    def ema_source(self) -> nn.Module:
        """The module the EMA follows (and an export writes): the generator."""

    @abstractmethod
    def __call__(self, batch: dict[str, Any]) -> StepOutput:
        """One step on ``batch`` (``image`` (B, 3, S, S) in [-1, 1], ``tokens`` (B, L))."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Trainable weights (under the `Networks.trainable` names), optimisers, scaler: checkpoint keys."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (raises RatlipError/KeyError/ValueError when it does not fit)."""

    @abstractmethod
    def train(self) -> None:
        """Put the trained networks in training mode."""

    def set_precision(self, precision: str) -> None:
        """Switch `train.precision` (fp32, amp_bf16, amp_fp16) for the next steps (bench counts FLOPs in fp32)."""
        raise NotImplementedError

    def describe(self, row: dict[str, Any]) -> str:
        """A short text of a logged row's losses for the console (plain text)."""
        return " ".join(f"{k} {row[k]:.4f}" for k in self.loss_columns if row.get(k, "") != "")


class Family(ABC):
    """A model family: how to build it, train it one step at a time, sample and export it."""

    #: the `model.family` value
    name: str = ""
    #: one line for `--help` and docs
    summary: str = ""
    #: whether `model.rat.hidden` means something to this family (what `ablate` and `bench` sweep)
    has_rat: bool = True
    #: whether its training step implements `train.accumulate` (micro-batches per optimiser step)
    accumulates: bool = False

    def refuse_accumulation(self, cfg: Config, world_size: int) -> None:
        """A one-line error where `train.accumulate` / `train.global_batch` asks a family that cannot for micro-batches."""
        if not self.accumulates and accumulation(cfg.train, world_size) > 1:
            raise RatlipError(f"train.accumulate (or train.global_batch) is implemented for the ratlip and galip "
                              f"families only; model.family={self.name} needs train.accumulate=1 and "
                              f"train.global_batch=0")

    @abstractmethod
    def text_encoder(self, cfg: Config, files: RunFiles, device: torch.device | str = "cpu") -> TextEncoder:
        """The frozen text encoder of a run (may write a file into ``files.folder`` on rank 0)."""

    @abstractmethod
    def build(self, cfg: Config, text: TextEncoder) -> Networks:
        """Every network from ``cfg`` around ``text`` (initialised from the global torch RNG), on its device."""

    @abstractmethod
    def training_step(self, cfg: Config, nets: Networks, device: torch.device,
                      noise: torch.Generator) -> TrainingStep:
        """The step object for ``nets`` (already on ``device``)."""

    @abstractmethod
    def build_generator(self, cfg: Config, text: TextEncoder) -> nn.Module:
        """The generator alone (for loading an export: weights are loaded by the caller)."""

    @abstractmethod
    def export_source(self, source: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        """What an export in ``out_dir`` records of a `TextEncoder.source` (file paths made relative)."""

    @abstractmethod
    def export_text_encoder(self, source: dict[str, Any], cfg: Config, folder: Path) -> TextEncoder:
        """Rebuild an export's text encoder from the ``source`` it stored (paths relative to ``folder``)."""

    #: why the family needs its `own_settings` (the note and the error say it)
    own_settings_why: str = ""

    def recipe(self, cfg: Config) -> tuple[dict[str, Any], str]:
        """The family's published training recipe for ``cfg``'s dataset: ({dotted key: value}, source).

        Unlike `own_settings` these are defaults: the config builder sets each key the user did not
        set (`--set`, `--config`) with one note naming the source, and an explicit value wins. Not
        re-applied to a resumed run's config. Default: none.
        """
        return {}, ""

    def own_settings(self, cfg: Config) -> dict[str, Any]:
        """What this family requires, {dotted config key: value} (default: nothing).

        The config builder (`ratlip_cli.config.apply_family_settings`, for every command) sets each key
        the user did not set, with a note (`--set model.family=galip` alone gives model.rat.hidden=0),
        and refuses one the user set to another value; `ratlip ablate --sweep model.family=...` gives
        every cell its family's own. `validate` refuses a config that breaks them.
        """
        return {}

    def pin_paths(self, cfg: Config) -> None:
        """Fix in ``cfg`` any default path that depends on ``train.runs_dir`` (`ratlip ablate` then
        moves each cell's runs_dir into the ablation folder). The default family has none."""

    def param_counts(self, nets: Networks) -> dict[str, dict[str, int]]:
        """Parameter counts per part ({"trainable", "frozen", "total"} each; "total" for everything).

        The default counts each `Networks.trainable` module and the frozen text encoder.
        """
        parts = {**nets.trainable, "text_encoder": nets.text.module}
        out: dict[str, dict[str, int]] = {}
        seen: set[int] = set()
        for name, module in parts.items():
            trainable = frozen = 0
            for p in module.parameters():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                if p.requires_grad:
                    trainable += p.numel()
                else:
                    frozen += p.numel()
            out[name] = {"trainable": trainable, "frozen": frozen, "total": trainable + frozen}
        total_t = sum(v["trainable"] for v in out.values())
        total_f = sum(v["frozen"] for v in out.values())
        out["total"] = {"trainable": total_t, "frozen": total_f, "total": total_t + total_f}
        return out

    def param_table(self, cfg: Config, clip_model: nn.Module, hiddens: Sequence[int],
                    with_release: bool = False) -> list[dict[str, Any]]:
        """`ratlip ablate --params-only`: parameter counts per RAT hidden size h (RATLIP's Table II)."""
        raise RatlipError(f"model.family={self.name} has no RAT: no parameter table per RAT hidden size")

    def pretrain_text(self, cfg: Config, restart: bool = False) -> Any:
        """`ratlip pretrain-text`: train the family's separately pretrained text encoder (DM-GAN's DAMSM)."""
        raise RatlipError(f"model.family={self.name} has no separately pretrained text encoder")

    def randomise_generator(self, generator: nn.Module, seed: int) -> None:
        """Move an initial generator off its initialisation (bench's precision comparison); default: no-op."""
        return None

    def read_release(self, path: Path) -> ReleaseRead:
        """`ratlip import`: read a released checkpoint of this family's authors (the harness writes the run)."""
        raise RatlipError(f"model.family {self.name} cannot import released checkpoints")

    def release_networks(self, cfg: Config, clip_model: nn.Module, release: ReleaseRead) -> tuple[Networks, bool]:
        """The networks of ``cfg`` holding a release's weights (eval mode), and whether the copy of the
        frozen CLIP stored in the release equals ``clip_model``."""
        raise RatlipError(f"model.family {self.name} cannot import released checkpoints")
