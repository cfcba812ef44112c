"""The training loop of `ratlip train`: one process, or one of several under torchrun.

The loop knows no model: `model.family` names a family (`ratlip_cli/models/registry.py`) that
builds the text encoder and the networks and provides the training-step object (what one
optimisation step does: D and G updates, losses, what is averaged across ranks, what the EMA
follows; e.g. `ratlip_cli/models/ratlip/step.py`). The loop owns the run folder, data order, stop
rules, logging, sample grids, the EMA, checkpoints and the export.

Multi-process: every rank builds identical models from the same seed; the step averages gradients
and losses across ranks (`dist.average_gradients`), so parameters stay bit-identical across ranks.
This is DistributedDataParallel's arithmetic done by hand (as StyleGAN2-ADA/3 do): DDP's module
wrapper does not mix well with GAN training's several forwards per backward, switched-off D
gradients during the G step, and MA-GP's double backward.

Determinism: on CPU the same seed gives the same run, and a resumed run continues bit for bit
(weights, optimisers, EMA, RNGs and the data position are all in the checkpoint).

No host sync per step: a step's losses and its device-side skip flag (`StepOutput.skipped`) stay on
the device, the EMA update is masked with the flag, and the host reads them (all in one go) only
on steps that log, evaluate, sample or checkpoint, or after `FLAG_READ_EVERY` steps; the counts,
log sums and the divergence stop are then worked out step by step as if read at each step.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ratlip_cli import __version__, dist
from ratlip_cli.clip_pretrain import ensure_in_domain_clip
from ratlip_cli.config import Config, accumulation, from_dict, resolve_config, save_config, to_dict
from ratlip_cli.console import console, warn
from ratlip_cli.data import TextImageDataset
from ratlip_cli.data.dataset import UnreadableImages
from ratlip_cli.data.ensure import ensure_dataset
from ratlip_cli.data.sampler import EpochBatchSampler
from ratlip_cli.data.split import read_split
from ratlip_cli.data.stream import ShardStream
from ratlip_cli.dist import resolve_device
from ratlip_cli.errors import RatlipError
from ratlip_cli.export import export_generator
from ratlip_cli.models.family import RunFiles
from ratlip_cli.models.registry import get_family
from ratlip_cli.models.trainable import trainable_state_dict
from ratlip_cli.profiling import apply_cpu_settings
from ratlip_cli.progress import progress_bar
from ratlip_cli.refusals import RESUME_FIXED, resume_refusals
from ratlip_cli.seeds import derive_seed
from ratlip_cli.signals import StopFlag, ignore_stop_signals
from ratlip_cli.train.budget import StopPlan, format_duration, stop_plan
from ratlip_cli.train.checkpoint import capture_rng, latest_checkpoint, restore_rng, save_checkpoint
from ratlip_cli.train.ema import EmaGenerator
from ratlip_cli.train.run import MetricsLog, RunPaths, claim_new_run, claim_run, save_sample_grid, write_environment
from ratlip_cli.train.shapes_eval import score_generator_on_shapes, shapes_eval_captions
from ratlip_cli.train.tensorboard import RunBoard

# Config sections whose change would make a checkpoint's weights meaningless.
ARCHITECTURE_SECTIONS = ("model", "clip", "dmgan")
SAMPLE_COLUMNS = 8
# Test hook: a folder where every rank saves its final weights as rank<N>.pt.
DEBUG_DUMP_ENV = "RATLIP_DEBUG_DUMP_DIR"
# Steps whose losses and skip flags stay on the device at most, between two reads by the host.
FLAG_READ_EVERY = 100


# ---------------------------------------------------------------------------------------------
# resume: the run's config, with budget changes allowed and architecture changes refused


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def architecture_changes(old: Config, new: Config) -> list[str]:
    """Dotted keys under model.* / clip.* whose values differ between two configs."""
    a, b = _flatten(to_dict(old)), _flatten(to_dict(new))
    return sorted(
        k for k in set(a) | set(b) if k.split(".")[0] in ARCHITECTURE_SECTIONS and a.get(k) != b.get(k)
    )


@dataclass
class ResumePoint:
    """A run directory and its newest usable checkpoint, read once (by `resume_point`)."""

    run_dir: Path
    checkpoint: Path
    state: dict[str, Any] = field(repr=False)


def resume_point(run_dir: str | Path | ResumePoint) -> ResumePoint:
    """Read the newest usable checkpoint of ``run_dir`` (a ResumePoint is returned as it is)."""
    if isinstance(run_dir, ResumePoint):
        return run_dir
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RatlipError(f"run directory not found: {run_dir}")
    paths = RunPaths(run_dir)
    path, state = latest_checkpoint(paths.checkpoints, map_location="cpu")
    if state is None or path is None:
        raise RatlipError(
            f"{run_dir} has no usable checkpoint in {paths.checkpoints}; start a new run instead of --resume"
        )
    return ResumePoint(run_dir, path, state)


def resume_config(
    run_dir: str | Path | ResumePoint, config_file: str | Path | None = None, overrides: list[str] | None = None
) -> Config:
    """The config of an existing run (from its newest usable checkpoint), with budget overrides applied.

    Overrides of keys the checkpoint fixes (`ratlip_cli.refusals.RESUME_FIXED`: the architecture,
    the seed, the run's name and place) are refused; every other change is applied. Pass the
    `ResumePoint` on to `train(cfg, resume=...)` so the checkpoint is read only once.
    """
    point = resume_point(run_dir)
    try:
        old = from_dict(point.state["config"])
    except RatlipError as exc:
        raise RatlipError(f"{point.checkpoint} holds a config this ratlip cannot read: {exc}") from None
    cfg = resolve_config(config_file=config_file, overrides=overrides, base=old)
    a, b = _flatten(to_dict(old)), _flatten(to_dict(cfg))
    refused = resume_refusals(sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)))
    if refused:
        fixed = ", ".join(k + "*" if k.endswith(".") else k for k in RESUME_FIXED)
        raise RatlipError(
            f"cannot resume {point.run_dir} with other {', '.join(refused)}: its checkpoint fixes {fixed}; "
            "budget, logging, learning rates, loss weights, precision, device and data.root may change"
        )
    # The run stays where it is, whatever runs_dir/name say.
    cfg.train.runs_dir = str(point.run_dir.parent)
    cfg.train.name = point.run_dir.name
    return cfg


# ---------------------------------------------------------------------------------------------
# data


def fixed_sample_captions(prepared, n: int = SAMPLE_COLUMNS) -> tuple[list[str], list[str]]:
    """Fixed train and test captions for sample grids: evenly spaced over each split (first phrasing)."""

    def pick(split: str) -> list[str]:
        if split not in prepared.splits:
            return []
        if hasattr(prepared, "split_shards"):  # tar shards: the first n samples (shards are shuffled)
            return [caps[0] for caps in prepared.split_captions(split, limit=n)]

        return read_split(prepared, split, require_files=False).first_captions(n)

    return pick("train"), pick("test")


# ---------------------------------------------------------------------------------------------
# the trainer


@dataclass
class TrainResult:
    """What a call to `train` did."""

    run_dir: Path
    step: int
    epoch: int
    images: int
    stopped_by: str
    checkpoint: Path | None
    export: Path | None
    elapsed_s: float = 0.0  # training time of the whole run (resumed parts included)
    device: str = ""
    # The family's networks (`ratlip_cli.models.family.Networks`) and the EMA generator, as trained.
    nets: Any = field(default=None, repr=False)
    ema_generator: Any = field(default=None, repr=False)


def _optimizers(step: Any) -> list[torch.optim.Optimizer]:
    """The optimisers a training step holds (as attributes or lists of them)."""
    optims: list[torch.optim.Optimizer] = []
    for value in vars(step).values():
        items = value if isinstance(value, (list, tuple)) else [value]
        optims += [o for o in items if isinstance(o, torch.optim.Optimizer)]
    return optims


class Trainer:
    """Builds everything for a run and runs the loop (use `train()` rather than this class directly)."""

    def __init__(
        self, cfg: Config, resume: str | Path | ResumePoint | None = None, on_step: Callable[[int], None] | None = None
    ):
        self.lock = None  # the run folder's RunLock (rank 0), released by close()
        self.cfg = cfg
        self.tc = cfg.train
        self.on_step = on_step
        self.resume = resume

    # ---- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, tc = self.cfg, self.tc
        self.family = get_family(cfg)
        self.device = resolve_device(tc.device)
        self.distributed = dist.init_from_env(self.device.type)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.main = dist.is_main()
        self.family.refuse_accumulation(cfg, self.world)
        self.accumulate = accumulation(tc, self.world)
        if self.device.type == "cpu":
            self.cpu_settings = apply_cpu_settings(tc.threads)
        if tc.precision == "amp_fp16" and self.device.type == "cpu" and self.main:
            warn("amp_fp16 on CPU is slow and only useful for testing; amp_bf16 or fp32 are the CPU choices")

        # The dataset first: a missing one is the most common mistake, reported before anything is written.
        prepared = ensure_dataset(cfg)

        # Run directory (rank 0 picks the name; everyone uses it).
        state = None
        if self.resume is not None:
            point = resume_point(self.resume)
            self.paths = RunPaths(point.run_dir)
            self.lock = claim_run(self.paths.root) if self.main else None
            state, self.resumed_from = point.state, point.checkpoint
            self.resume = None  # the state is handed over once; drop the reference as it is loaded
        else:
            if self.main:
                paths, self.lock = claim_new_run(cfg)
            root = str(paths.root) if self.main else None
            self.paths = RunPaths(Path(dist.broadcast_object(root)))
            self.resumed_from = None
        if self.main:
            self.paths.make()
            if self.resumed_from is not None:
                console.print(f"resuming run {self.paths.root} from {self.resumed_from.name}", highlight=False)
            else:
                console.print(f"run directory: {self.paths.root}", highlight=False)
            if self.device.type == "cpu":
                console.print(f"cpu: {self.cpu_settings}", highlight=False)
        dist.barrier()

        # The family's frozen text encoder (a random CLIP is saved in the run folder once), then its
        # networks: identical on every rank (same seed), then moved to the device.
        files = RunFiles(self.paths.root, resuming=state is not None, main=self.main, seed=tc.seed,
                         in_domain_clip=ensure_in_domain_clip)
        text = self.family.text_encoder(cfg, files)
        torch.manual_seed(derive_seed(tc.seed, "init"))
        self.nets = self.family.build(cfg, text).to(self.device)
        # One noise generator per micro-batch, seeded as the process it stands for (rank x accumulate + i).
        self.noise_gens = [torch.Generator().manual_seed(derive_seed(tc.seed, "noise", v)) for v in self._virtual_ranks()]
        self.noise_gen = self.noise_gens[0]
        noise = self.noise_gens if self.accumulate > 1 else self.noise_gen
        self.step_fn = self.family.training_step(cfg, self.nets, self.device, noise)
        process_batch = tc.batch_size * self.accumulate
        self.ema = EmaGenerator(self.step_fn.ema_source, tc.ema_halflife_kimg, tc.ema_rampup)
        self.loss_columns = tuple(self.step_fn.loss_columns)

        # Data.
        data_seed = derive_seed(tc.seed, "data") % (2**32)
        if hasattr(prepared, "split_shards"):  # tar shards: a stream that batches (and positions) itself

            self.dataset = self.sampler = ShardStream(
                prepared, "train", cfg.data, self.nets.text.tokenizer, process_batch, data_seed, self.rank, self.world,
                uint8=True,
            )
            self.dataset.check_workers(cfg.data.num_workers)
        else:
            self.dataset = TextImageDataset(
                prepared, "train", cfg.data, self.nets.text.tokenizer, train=True, seed=data_seed, skip_unreadable=True,
                uint8=True, decoded=True,
            )
            self.sampler = EpochBatchSampler(len(self.dataset), process_batch, tc.seed, self.rank, self.world)
        self.unreadable = UnreadableImages(tc.max_unreadable, prepared.root)
        if self.sampler.steps_per_epoch == 0:
            raise RatlipError(
                f"the train split has {getattr(self.dataset, 'num_samples', None) or len(self.dataset)} images, "
                f"fewer than one batch of "
                f"{process_batch * self.world}; lower train.batch_size"
            )
        self.sample_train, self.sample_test = fixed_sample_captions(prepared)
        self.eval_captions: list[str] = []
        if tc.eval_every > 0:
            if cfg.data.name == "shapes" and "test" in prepared.splits:
                self.eval_captions = shapes_eval_captions(prepared, "test", cfg.eval.num)
            elif self.main:
                warn("train.eval_every: in-training evaluation is implemented for the shapes dataset only; "
                     "use `ratlip eval` on the run")

        # Counters and RNGs.
        self.step = self.epoch = self.step_in_epoch = self.images = 0
        self.elapsed = 0.0
        self.nonfinite_total = self.nonfinite_streak = 0
        self._pending: list[tuple[int, Any]] = []  # (step, StepOutput) not read by the host yet
        self.acc = self._new_acc()
        torch.manual_seed(derive_seed(tc.seed, "torch", self.rank))
        np.random.seed(derive_seed(tc.seed, "numpy", self.rank) % (2**32))
        random.seed(derive_seed(tc.seed, "python", self.rank))
        self.metrics = MetricsLog(self.paths.metrics, self.loss_columns)
        self.last_checkpoint: Path | None = self.resumed_from
        if state is not None:
            self._load_state(state)
        if self.main:
            save_config(cfg, self.paths.config)
            self.metrics.start(keep_until_step=self.step if state is not None else None)
            write_environment(self.paths.root, self.device, self.world)
        self.board = RunBoard(self.paths.root, resume_step=self.step if state is not None else None, enabled=self.main)

    def _virtual_ranks(self) -> range:
        """The processes this one's micro-batches stand for: rank x accumulate + i (the rank itself without accumulation)."""
        return range(self.rank * self.accumulate, (self.rank + 1) * self.accumulate)

    def close(self) -> None:
        """Release the run folder for the next writer."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # ---- state ---------------------------------------------------------------------------------
    def _new_acc(self) -> dict[str, float]:
        return {**dict.fromkeys(self.loss_columns, 0.0), "n": 0.0, "images": 0.0, "time": 0.0}

    def _state(self) -> dict[str, Any]:
        self._read_step_flags()
        noise = [g.get_state() for g in self.noise_gens] if self.accumulate > 1 else self.noise_gen.get_state()
        rngs = dist.all_gather_object({"rng": capture_rng(), "noise": noise})
        return {
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "images": self.images,
            "elapsed_s": self.elapsed,
            "world_size": self.world,
            "batch_size": self.tc.batch_size,
            "accumulate": self.accumulate,
            **self.step_fn.state_dict(),
            "ema": self.ema.state_dict(),
            "rng": [r["rng"] for r in rngs],
            "noise_rng": [r["noise"] for r in rngs],
            "log_acc": dict(self.acc),
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_streak": self.nonfinite_streak,
            "unreadable": self.unreadable.state(),
            "config": to_dict(self.cfg),
            "package_version": __version__,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        # A --resume may change learning rates and betas, but the optimiser states carry the old
        # ones: keep the values the step's optimisers were built with from this run's config.
        optims = _optimizers(self.step_fn)
        settings = [[(g.get("lr"), g.get("betas")) for g in o.param_groups] for o in optims]
        try:
            self.step_fn.load_state_dict(state)
            self.ema.load_state_dict(state["ema"])
        except (RatlipError, KeyError, ValueError) as exc:
            raise RatlipError(f"{self.resumed_from} does not fit this run's models: {exc}") from None
        for optim, groups in zip(optims, settings):  # load_state_dict replaced the group dicts
            for group, (lr, betas) in zip(optim.param_groups, groups):
                group["lr"], group["betas"] = lr, betas
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.step_in_epoch, self.images = int(state["step_in_epoch"]), int(state["images"])
        self.elapsed = float(state["elapsed_s"])
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))
        self.unreadable.load(list(state.get("unreadable", [])))
        self.acc = {**self._new_acc(), **{k: float(v) for k, v in state.get("log_acc", {}).items()}}
        layout = (int(state["world_size"]), int(state["batch_size"]), int(state.get("accumulate", 1)))
        if layout == (self.world, self.tc.batch_size, self.accumulate):
            restore_rng(state["rng"][self.rank])
            noise = state["noise_rng"][self.rank]
            for g, st in zip(self.noise_gens, noise if self.accumulate > 1 else [noise]):
                g.set_state(st)
        else:
            if self.main:
                warn(
                    f"resuming with {self.world} process(es) x {self.accumulate} micro-batch(es) x batch "
                    f"{self.tc.batch_size} instead of {layout[0]} x {layout[2]} x {layout[1]}: the data order restarts at the beginning "
                    f"of epoch {self.epoch + 1} and random states are reseeded (not an exact continuation)"
                )
            self.step_in_epoch = 0
            for g, v in zip(self.noise_gens, self._virtual_ranks()):
                g.manual_seed(derive_seed(self.tc.seed, "noise", v, self.step))
            torch.manual_seed(derive_seed(self.tc.seed, "torch", self.rank, self.step))

    def save_checkpoint(self) -> Path | None:
        """Checkpoint (all ranks take part: RNG states are gathered) and export the EMA and raw generators (rank 0)."""
        state = self._state()
        path = None
        if self.main:
            path = save_checkpoint(state, self.paths.checkpoints, self.tc.keep_checkpoints)
            self.export()
            self.last_checkpoint = path
            self.board.flush()  # everything up to the checkpoint is on disk; a resume purges what follows
        dist.barrier()
        return path

    def export(self) -> Path:
        return export_generator(
            self.ema.module, self.cfg, self.paths.export, text=self.nets.text, step=self.step, images_seen=self.images,
            raw=self.step_fn.ema_source,
        )

    # ---- one step ----------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Any]):
        """One optimisation step of the family's step object (`StepOutput`: losses or None, overflow)."""
        return self.step_fn(batch)

    # ---- the loop ----------------------------------------------------------------------------------
    def _done_reason(self) -> str | None:
        if self.tc.max_steps > 0 and self.step >= self.tc.max_steps:
            return "max_steps"
        if self.tc.epochs > 0 and self.epoch >= self.tc.epochs:
            return "epochs"
        if self.tc.max_minutes > 0 and self.elapsed >= self.tc.max_minutes * 60:
            return "max_minutes"
        return None

    def _loader(self):
        self.sampler.set_position(self.epoch, self.step_in_epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        nw = max(0, int(self.cfg.data.num_workers))
        if self.sampler is self.dataset:  # a ShardStream
            return torch.utils.data.DataLoader(
                self.dataset, batch_size=None, num_workers=nw, pin_memory=self.device.type == "cuda",
                worker_init_fn=ignore_stop_signals,
            )
        g = torch.Generator().manual_seed(derive_seed(self.tc.seed, "workers", self.rank, self.epoch, self.step_in_epoch))
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=nw,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            generator=g,
            worker_init_fn=ignore_stop_signals,
        )

    def _flags_due(self) -> bool:
        """Whether the host reads the pending steps now: this step logs, evaluates, samples or
        checkpoints (each waits for the device anyway), or `FLAG_READ_EVERY` steps are pending."""
        tc = self.tc
        every = (tc.log_every, tc.eval_every, tc.sample_every, tc.checkpoint_every)
        return len(self._pending) >= FLAG_READ_EVERY or any(e > 0 and self.step % e == 0 for e in every)

    def _read_step_flags(self) -> None:
        """Count the pending steps' skips and add their losses to the log sums, in step order, with one
        host read for all; stop a diverged run naming the step where `train.max_nonfinite` was reached."""
        pending, self._pending = self._pending, []
        deferred = [out for _, out in pending if out.losses is not None]
        rows: list[list[float]] = []
        if deferred:
            flat = [torch.cat([out.losses.detach().float().flatten(),
                               (out.skipped if out.skipped is not None else out.losses.new_zeros(())).float().view(1)])
                    for out in deferred]
            same = len({t.device for t in flat}) == 1
            rows = torch.stack(flat).tolist() if same else [t.tolist() for t in flat]
        values = iter(rows)
        limit = max(1, self.tc.max_nonfinite)
        for step, out in pending:
            row = next(values) if out.losses is not None else None
            if row is None or row[-1] != 0:
                # A GradScaler overflow (fp16) is routine and not counted, but a run of them
                # still ends the run like non-finite losses do.
                self.nonfinite_total += 0 if out.overflow else 1
                self.nonfinite_streak += 1
            else:
                self.nonfinite_streak = 0
                for k, v in zip(self.loss_columns, row[:-1]):
                    self.acc[k] += v
                self.acc["n"] += 1
            if self.nonfinite_streak >= limit:
                where = (f"the last good checkpoint is {self.last_checkpoint}"
                         if self.last_checkpoint else "no checkpoint was written yet")
                raise RatlipError(
                    f"training diverged: {self.nonfinite_streak} steps in a row had non-finite losses "
                    f"(step {step}); {where}; resume it with lower learning rates "
                    "(--set train.lr_d=... --set train.lr_g=...) or --precision fp32"
                )

    def _log_row(self, extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
        self._read_step_flags()
        n = self.acc["n"]
        if n == 0 and not extra and self.acc["images"] == 0:
            return None
        row: dict[str, Any] = {
            "step": self.step,
            "epoch": round(self.epoch + self.step_in_epoch / self.sampler.steps_per_epoch, 4),
            "images": self.images,
            "nonfinite": self.nonfinite_total,
            "unreadable": len(self.unreadable),
            "images_per_s": round(self.acc["images"] / self.acc["time"], 2) if self.acc["time"] > 0 else "",
            "elapsed_s": round(self.elapsed, 1),
        }
        for k in self.loss_columns:
            row[k] = (self.acc[k] / n) if n else ""
        if extra:
            row.update(extra)
        if self.main:
            self.metrics.write(row)
            self.board.scalars(self.step, row)
            self.board.learning_rates(self.step, self._learning_rates())
        self.acc = self._new_acc()
        return row

    def _learning_rates(self) -> dict[str, float]:
        """The current learning rate of every optimiser the step object holds, by attribute name."""
        return {name: opt.param_groups[0]["lr"] for name, opt in vars(self.step_fn).items()
                if isinstance(opt, torch.optim.Optimizer)}

    def _sample(self) -> None:
        """A grid from the EMA generator: fixed noise, fixed train and test captions (rank 0 only)."""
        if not self.main:
            return
        caps_train, caps_test = self.sample_train, self.sample_test
        ncols = max(len(caps_train), len(caps_test), 1)
        z_dim = self.nets.z_dim
        g = torch.Generator().manual_seed(derive_seed(self.tc.seed, "sample-noise"))
        zs = [torch.randn(ncols, z_dim, generator=g) for _ in range(2)]
        rows_caps, rows_z = [], []
        for caps in (caps_train, caps_test):
            if not caps:
                continue
            for z in zs:
                rows_caps.append([*caps, *[""] * (ncols - len(caps))])
                rows_z.append(z)
        captions = [c for row in rows_caps for c in row]
        labels = []
        for r, row in enumerate(rows_caps):
            split = "train" if r < (2 if caps_train else 0) else "test"
            labels.extend(f"[{split}] {c}" if c else "" for c in row)
        z = torch.cat(rows_z).to(self.device)
        with torch.no_grad():
            images = self.ema.module(z, self._embed([c or " " for c in captions])).float()
        mask = torch.tensor([bool(c) for c in captions], dtype=images.dtype, device=images.device).view(-1, 1, 1, 1)
        images = images.clamp(-1, 1) * mask + (1 - mask)  # blank cells for missing captions
        path = self.paths.samples / f"step-{self.step:08d}.png"
        save_sample_grid(images, labels, path, ncols)
        self.board.grid(self.step, path)

    def _embed(self, captions: list[str]):
        text = self.nets.text
        return text.encode(text.tokenizer(captions).to(self.device))

    def _evaluate(self) -> dict[str, Any]:
        res = score_generator_on_shapes(
            self.ema.module, self._embed, self.eval_captions, self.nets.z_dim,
            device=self.device, seed=self.tc.seed, batch_size=max(1, self.cfg.eval.batch_size),
        )
        return {"eval_colour": res["colour"], "eval_shape": res["shape"], "eval_background": res["background"],
                "eval_all": res["all"], "eval_n": res["n"]}

    def _stop_plan(self) -> StopPlan:
        """The budget that will stop this run first, from the step rate of this process so far."""
        done = self.step - self._start_step
        spent = self.elapsed - self._start_elapsed
        rate = done / spent if done > 0 and spent > 0 else None
        tc = self.tc
        return stop_plan(self.step, self.elapsed, self.sampler.steps_per_epoch, tc.max_steps, tc.epochs,
                         tc.max_minutes, rate)

    def _progress(self):
        enabled = self.main and console.is_terminal
        bar = progress_bar("[bold]epoch {task.fields[epoch]}", extra=("{task.fields[plan]}", "{task.fields[info]}"),
                           elapsed=True, remaining=False, enabled=enabled)
        return bar, enabled

    def _has_losses(self, row: dict[str, Any]) -> bool:
        return bool(self.loss_columns) and row.get(self.loss_columns[0], "") != ""

    def _plain_log(self, row: dict[str, Any]) -> None:
        plan = self._stop_plan()
        total = ""
        if plan.total_steps is not None:
            total = f"/{'~' if plan.rule == 'max_minutes' else ''}{plan.total_steps}"
        parts = [f"step {row['step']}{total}", f"epoch {row['epoch']:.2f}"]
        if self._has_losses(row):
            parts.append(self.step_fn.describe(row))
        if row.get("images_per_s", "") != "":
            parts.append(f"{row['images_per_s']:.1f} img/s")
        if row.get("eval_colour", "") != "":
            parts.append(f"eval colour {row['eval_colour']:.2f} shape {row['eval_shape']:.2f} "
                         f"background {row['eval_background']:.2f}")
        if self.nonfinite_total:
            parts.append(f"non-finite {self.nonfinite_total}")
        if plan.rule:
            eta = f"ETA {format_duration(plan.eta_s)} " if plan.eta_s is not None else ""
            parts.append(f"{eta}({plan.label})")
        console.print(" | ".join(parts), highlight=False, soft_wrap=True)

    def _debug_dump(self) -> None:
        # For tests of multi-process training: every rank saves its final weights (outside the run dir).
        folder = os.environ.get(DEBUG_DUMP_ENV)
        if folder:
            state = {name: trainable_state_dict(m) for name, m in self.nets.trainable.items()}
            state["ema"] = self.ema.state_dict()
            torch.save(state, Path(folder) / f"rank{self.rank}.pt")

    def run(self) -> TrainResult:
        tc = self.tc
        spe = self.sampler.steps_per_epoch
        stop_reason = self._done_reason()
        if stop_reason is not None:
            if self.main:
                console.print(f"nothing to do: the run already reached {stop_reason} (step {self.step})", highlight=False)
            export = self.export() if self.main else None
            return self._result(stop_reason, self.last_checkpoint, export)
        if self.main and self.step == 0:
            self._sample()
        self.step_fn.train()
        progress, bar_on = self._progress()
        last_checkpoint_step = self.step if self.resumed_from is not None else -1
        elapsed_before, loop_start = self.elapsed, time.perf_counter()
        self._start_step, self._start_elapsed = self.step, self.elapsed
        plan = self._stop_plan()
        with StopFlag() as stop, progress:
            task = progress.add_task("train", total=plan.total_steps, completed=self.step, epoch=self.epoch + 1,
                                     info="", plan=plan.describe(self.step))
            while stop_reason is None:
                t_fetch = time.perf_counter()
                for batch in self._loader():
                    self.unreadable.note(batch)
                    out = self.train_step(batch)
                    self.acc["time"] += time.perf_counter() - t_fetch  # data + step, not logging/checkpoints
                    b_global = batch["image"].shape[0] * self.world
                    self.step += 1
                    self.step_in_epoch += 1
                    self.images += b_global
                    if out.losses is not None:  # skipped on the device where out.skipped says so
                        self.ema.update(b_global, self.images, skip=out.skipped)
                    self._pending.append((self.step, out))
                    self.acc["images"] += b_global
                    if self.step_in_epoch >= spe:
                        self.epoch += 1
                        self.step_in_epoch = 0
                    self.elapsed = elapsed_before + (time.perf_counter() - loop_start)

                    if self._flags_due():  # counts skips, sums losses, stops a diverged run
                        t_read = time.perf_counter()
                        self._read_step_flags()
                        self.acc["time"] += time.perf_counter() - t_read  # the device finishing the queued steps
                    extra = None
                    if tc.eval_every > 0 and self.eval_captions and self.step % tc.eval_every == 0:
                        extra = self._evaluate()
                    if (tc.log_every > 0 and self.step % tc.log_every == 0) or extra:
                        row = self._log_row(extra)
                        if row is not None and self.main and not bar_on:
                            self._plain_log(row)
                        if row is not None and bar_on and self._has_losses(row):
                            info = f"{self.step_fn.describe(row)} {row['images_per_s'] or 0:.1f} img/s"
                            progress.update(task, info=info)
                    if tc.sample_every > 0 and self.step % tc.sample_every == 0:
                        self._sample()
                    # No periodic checkpoint inside a run of non-finite steps: the last one stays "good".
                    if tc.checkpoint_every > 0 and self.step % tc.checkpoint_every == 0 and self.nonfinite_streak == 0:
                        self.save_checkpoint()
                        last_checkpoint_step = self.step
                    self.elapsed = elapsed_before + (time.perf_counter() - loop_start)
                    if bar_on:
                        plan = self._stop_plan()
                        progress.update(task, completed=self.step, epoch=self.epoch + 1, total=plan.total_steps,
                                        plan=plan.describe(self.step))

                    if self.on_step is not None:
                        self.on_step(self.step)

                    # Time and signals differ between processes: every rank stops if any wants to.
                    stop_reason = self._done_reason()
                    local = stop.signal_name is not None or stop_reason == "max_minutes"
                    if dist.any_true(local, device=self.device) and stop_reason is None:
                        stop_reason = stop.signal_name or "max_minutes"
                    if stop_reason is not None:
                        break
                    t_fetch = time.perf_counter()
                if stop_reason is None:
                    stop_reason = self._done_reason()
        # The end: a grid, a checkpoint and the export. (No row for a partial log interval: its sums
        # are in the checkpoint, so a resumed run logs exactly the rows an uninterrupted one would.)
        self._read_step_flags()
        if self.main and tc.sample_every > 0 and self.step % tc.sample_every != 0:
            self._sample()
        path = self.last_checkpoint
        if last_checkpoint_step != self.step:
            path = self.save_checkpoint()
        elif self.main:
            self.export()
        export = self.paths.export / "generator.safetensors"
        self.board.close()
        self._debug_dump()
        if self.main:
            how = {
                "max_steps": f"reached train.max_steps={tc.max_steps}",
                "epochs": f"finished {tc.epochs} epochs",
                "max_minutes": f"reached train.max_minutes={tc.max_minutes:g}",
            }.get(stop_reason, f"stopped by {stop_reason}")
            console.print(
                f"{how} at step {self.step} ({self.images} images); checkpoint {path}; "
                f"generator exported to {export}",
                highlight=False,
                soft_wrap=True,
            )
            if stop_reason not in ("max_steps", "epochs", "max_minutes"):
                console.print(f"continue with: ratlip train --resume {self.paths.root}", highlight=False)
        return self._result(stop_reason, path, export)

    def _result(self, stopped_by: str, checkpoint: Path | None, export: Path | None) -> TrainResult:
        return TrainResult(self.paths.root, self.step, self.epoch, self.images, stopped_by, checkpoint, export,
                           elapsed_s=self.elapsed, device=str(self.device), nets=self.nets,
                           ema_generator=self.ema.module)


def train(
    cfg: Config, resume: str | Path | ResumePoint | None = None, on_step: Callable[[int], None] | None = None
) -> TrainResult:
    """Train (or, with ``resume`` = a run directory or its `ResumePoint`, continue) a model; see the module docstring.

    ``on_step(step)`` is called after every optimiser step (tests use it to simulate a crash).
    Under torchrun every process calls this; only rank 0 writes files and logs.
    """
    trainer = Trainer(cfg, resume=resume, on_step=on_step)
    try:
        trainer.setup()
        return trainer.run()
    finally:
        trainer.close()
        dist.destroy()
