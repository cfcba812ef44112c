"""One optimisation step of RATLIP/GALIP (GALIP's order), as the family's `TrainingStep`.

  1. s = CLIP text embedding of the batch's captions (frozen, no grad); z from the run's noise RNG.
  2. D step: real logits (x from `Discriminator.encode`, requiring grad, for MA-GP), mismatched
     logits (sentences shifted by one), fake = G(z, s) (its graph kept for step 3), fake logits on
     the detached fake features; hinge + MA-GP; Adam on D + head.
  3. G step: the updated D on the same fake features (now with the graph to G);
     ``-D - clip_sim_weight * cos``; Adam on G. The EMA follows G (the loop updates it).

Multi-process: gradients (and the step's losses, in the same buffer) are averaged with one
all-reduce per optimiser and BatchNorm statistics after each step (`dist.average_gradients`,
`dist.average_buffers`), so parameters stay bit-identical across ranks.

Non-finite losses skip the step without a host sync (fp32 and bf16, fused Adam): whether each
optimiser steps is decided on the device (`optim.step_unless`: the fused kernel's ``found_inf``),
and a non-finite D loss also skips the G update and puts back the BatchNorm statistics the G pass
moved, as the early return of the host check did. The step returns the losses with a device flag
`StepOutput.skipped` that the loop reads only when it logs. With fp16 (GradScaler) or an
optimiser without the fused kernel the step reads the losses on the host and returns early.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ratlip_cli import dist
from ratlip_cli.data.dataset import to_model_range
from ratlip_cli.config import Config, accumulation
from ratlip_cli.errors import RatlipError
from ratlip_cli.models.ratlip.losses import d_hinge_loss, g_loss, ma_gp, mismatched
from ratlip_cli.models.family import Networks, StepOutput, TrainingStep
from ratlip_cli.optim import BufferGuard, adam, all_finite, skips_on_device, step_unless
from ratlip_cli.models.trainable import load_trainable_state_dict, set_trainable, trainable_parameters, trainable_state_dict
from ratlip_cli.precision import autocast
from ratlip_cli.run_columns import metrics_columns
from ratlip_cli.compiling import compile_decision, generator_runner

# The release's fp16 recipe (code/cfg/*.yml: growth_interval 2000, scaler_min 64; modules.py resets to 16384).
RELEASE_GROWTH_INTERVAL = 2000
RELEASE_SCALER_MIN = 64.0
RELEASE_SCALER_RESET = 16384.0

D_COLUMNS = ("d_loss", "d_real", "d_fake", "d_mis", "ma_gp")
G_COLUMNS = ("g_loss", "g_clip")
# metrics.csv of a RATLIP/GALIP run
METRICS_COLUMNS = metrics_columns((*D_COLUMNS, *G_COLUMNS))


def _unique(params) -> list[nn.Parameter]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _float_buffers(frozen: nn.Module, *modules: nn.Module, floating: bool = True) -> list[torch.Tensor]:
    """Floating-point buffers of ``modules`` (BatchNorm statistics), the frozen backbone's left out
    (``floating=False``: the integer ones too, e.g. BatchNorm's ``num_batches_tracked``)."""
    skip = {id(t) for t in frozen.buffers()}
    seen, out = set(), []
    for m in modules:
        for b in m.buffers():
            if (b.is_floating_point() or not floating) and id(b) not in skip and id(b) not in seen:
                seen.add(id(b))
                out.append(b)
    return out


@dataclass
class DPass:
    """What the D step's forward leaves for the losses and the G step (`RatlipStep.d_pass`)."""

    z: torch.Tensor
    s: torch.Tensor
    x_real: torch.Tensor
    s_real: torch.Tensor
    real_logits: torch.Tensor
    mis_logits: torch.Tensor
    x_fake: torch.Tensor
    pooled_fake: torch.Tensor | None
    fake_logits: torch.Tensor
    need_clip: bool


class RatlipStep(TrainingStep):
    """D update then G update on one batch; see the module docstring."""

    loss_columns = (*D_COLUMNS, *G_COLUMNS)

    def __init__(self, cfg: Config, nets: Networks, device: torch.device,
                 noise: torch.Generator | Sequence[torch.Generator]) -> None:
        tc = cfg.train
        self.noises = list(noise) if isinstance(noise, (list, tuple)) else [noise]
        self.cfg, self.nets, self.device, self.noise = cfg, nets, device, self.noises[0]
        self.accumulate = accumulation(tc, dist.get_world_size())
        self.precision = tc.precision
        self.G = nets.trainable["generator"]
        self.D = nets.trainable["discriminator"]
        self.head = nets.trainable["head"]
        self.backbone = nets.text.module
        self.channels_last = bool(tc.channels_last and device.type == "cuda")
        if self.channels_last:
            for m in (self.G, self.D, self.head):
                m.to(memory_format=torch.channels_last)
        self.g_params = _unique(trainable_parameters(self.G))
        self.d_params = _unique(trainable_parameters(self.D) + trainable_parameters(self.head))
        self.buffers = _float_buffers(self.backbone, self.G, self.D, self.head)
        self.all_buffers = _float_buffers(self.backbone, self.G, self.D, self.head, floating=False)
        betas = (float(tc.betas[0]), float(tc.betas[1]))
        self.opt_g = adam(self.g_params, lr=tc.lr_g, betas=betas)
        self.opt_d = adam(self.d_params, lr=tc.lr_d, betas=betas)
        self.scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "amp_fp16")
        # The release's fp16 recipe: one scaler per optimiser (code/src/train.py, lib/modules.py `train`).
        self.release_fp16 = tc.precision == "amp_fp16" and tc.fp16_recipe == "release"
        if self.release_fp16 and self.accumulate > 1:
            raise RatlipError(f"train.fp16_recipe=release is the release's one-batch step; with {self.accumulate} "
                              "micro-batches per step (train.accumulate / train.global_batch) use "
                              "train.fp16_recipe=ratlip, or train.global_batch=0 and train.accumulate=1")
        if self.release_fp16:
            self.scaler_d = torch.amp.GradScaler(device.type, growth_interval=RELEASE_GROWTH_INTERVAL)
            self.scaler_g = torch.amp.GradScaler(device.type, growth_interval=RELEASE_GROWTH_INTERVAL)
        # Skip non-finite steps on the device (no host sync) where both optimisers can (fused Adam).
        self.device_skip = all(skips_on_device(o) for o in (self.opt_g, self.opt_d))
        # train.compile: G(z, s) through torch.compile where it pays (the module itself stays eager).
        self.compiled, self.compile_reason = compile_decision(tc.compile, device)
        self.run_g = generator_runner(self.G, self.compiled)

    @property
    def ema_source(self) -> nn.Module:
        return self.G

    def set_precision(self, precision: str) -> None:
        self.precision = precision

    def train(self) -> None:
        for m in (self.G, self.D, self.head):
            m.train()

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": trainable_state_dict(self.G),
            "discriminator": trainable_state_dict(self.D),
            "head": trainable_state_dict(self.head),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            **({"scaler_d": self.scaler_d.state_dict(), "scaler_g": self.scaler_g.state_dict()}
               if self.release_fp16 else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_trainable_state_dict(self.G, state["generator"])
        load_trainable_state_dict(self.D, state["discriminator"])
        load_trainable_state_dict(self.head, state["head"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.release_fp16 and state.get("scaler_d"):
            self.scaler_d.load_state_dict(state["scaler_d"])
            self.scaler_g.load_state_dict(state["scaler_g"])

    def describe(self, row: dict[str, Any]) -> str:
        return (f"d {row['d_loss']:.4f} (real {row['d_real']:.3f} fake {row['d_fake']:.3f} mis {row['d_mis']:.3f} "
                f"gp {row['ma_gp']:.4f}) g {row['g_loss']:.4f}")

    def d_pass(self, images: torch.Tensor, tokens: torch.Tensor, noise: torch.Generator,
               fake_graph: bool = True) -> DPass:
        """The D step's forward on one batch: text embedding, noise, real / mismatched / fake logits (D and
        head trainable). ``fake_graph=False`` runs G and the fake's encoding without a graph (an
        accumulating step recomputes them in its G pass)."""
        dev = self.device
        amp = lambda: autocast(dev, self.precision)  # noqa: E731
        cl = torch.channels_last if self.channels_last else torch.contiguous_format
        real = to_model_range(images.to(dev, non_blocking=True)).to(memory_format=cl)
        tokens = tokens.to(dev, non_blocking=True)
        with torch.no_grad(), amp():
            s = self.backbone.encode_text(tokens)[0]
        s = s.float()
        z = torch.randn(real.shape[0], self.cfg.model.z_dim, generator=noise).to(dev, non_blocking=True)
        need_clip = self.cfg.train.clip_sim_weight != 0
        set_trainable(self.D, True)
        set_trainable(self.head, True)
        with amp():
            x_real, _ = self.D.encode(real, with_pooled=False)
        x_real = x_real.detach().requires_grad_(True)
        s_real = s.detach().requires_grad_(True)
        pooled_fake = None
        with amp():
            dmap_real = self.D(x_real)
            real_logits = self.head(dmap_real, s_real)
            mis_logits = self.head(dmap_real, mismatched(s))
            with nullcontext() if fake_graph else torch.no_grad():
                fake = self.run_g(z, s)
                x_fake, pooled_fake = self.D.encode(fake, with_pooled=need_clip and fake_graph)
                if need_clip and fake_graph and pooled_fake is None:  # a CNN D: the CLIP loss reads the frozen CLIP
                    pooled_fake = self.backbone.encode_image(fake)
            fake_logits = self.head(self.D(x_fake.detach()), s)
        return DPass(z, s, x_real, s_real, real_logits, mis_logits, x_fake, pooled_fake, fake_logits, need_clip)

    def __call__(self, batch: dict[str, Any]) -> StepOutput:
        if self.accumulate > 1:
            return accumulated_step(self, batch)
        if self.release_fp16:
            return release_fp16_step(self, batch)
        tc = self.cfg.train
        f = self.d_pass(batch["image"], batch["tokens"], self.noise)
        s, x_real, s_real, real_logits, mis_logits = f.s, f.x_real, f.s_real, f.real_logits, f.mis_logits
        x_fake, pooled_fake, fake_logits, need_clip = f.x_fake, f.pooled_fake, f.fake_logits, f.need_clip
        fp16 = self.scaler.is_enabled()
        on_device = self.device_skip and not fp16
        gp = ma_gp(real_logits, x_real, s_real, tc.ma_gp_weight, tc.ma_gp_power,
                   scale=self.scaler.get_scale() if fp16 else None)
        dl = d_hinge_loss(real_logits, fake_logits, mis_logits, gp)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(dl.total).backward()
        d_vec = torch.stack([dl.total, dl.real, dl.fake, dl.mis, dl.ma_gp]).detach().float()
        d_vec = dist.average_gradients(self.d_params, d_vec)
        if on_device:
            ok_d = all_finite(d_vec)
            step_unless(self.opt_d, ~ok_d)
            guard = BufferGuard(self.all_buffers)
            guard.save()  # what a skipped step leaves: the statistics before the G pass, not averaged
            return self._g_step(x_fake, s, pooled_fake if need_clip else None, d_vec, ok_d, guard)
        d_vec = d_vec.cpu()
        if not torch.isfinite(d_vec).all():
            self.opt_d.zero_grad(set_to_none=True)
            overflow = fp16 and bool(torch.isfinite(d_vec[1:4]).all())
            if fp16:  # e.g. an fp16 overflow of MA-GP's scaled input gradients: back off like GradScaler
                self.scaler.update(self.scaler.get_scale() * self.scaler.get_backoff_factor())
            return StepOutput(None, overflow)
        self.scaler.step(self.opt_d)

        return self._g_step(x_fake, s, pooled_fake if need_clip else None, d_vec)

    def _g_step(self, x_fake: torch.Tensor, s: torch.Tensor, pooled_fake: torch.Tensor | None, d_vec: torch.Tensor,
                ok_d: torch.Tensor | None = None, guard: BufferGuard | None = None) -> StepOutput:
        """The G update (D frozen; the same fakes through the updated D), skipped on the device where
        ``ok_d`` (the D losses' device flag) is given and false, or the G losses are not finite."""
        tc = self.cfg.train
        set_trainable(self.D, False)
        set_trainable(self.head, False)
        with autocast(self.device, self.precision):
            fake_logits_g = self.head(self.D(x_fake), s)
        gl = g_loss(fake_logits_g, s, pooled_fake, tc.clip_sim_weight)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(gl.total).backward()
        g_vec = torch.stack([gl.total, gl.clip_sim]).detach().float()
        g_vec = dist.average_gradients(self.g_params, g_vec)
        set_trainable(self.D, True)
        set_trainable(self.head, True)
        return self.finish_g(d_vec, g_vec, ok_d, guard)

    def finish_g(self, d_vec: torch.Tensor, g_vec: torch.Tensor, ok_d: torch.Tensor | None = None,
                 guard: BufferGuard | None = None) -> StepOutput:
        """The G update from its averaged gradients: on the device (``ok_d``, ``guard`` given: skip where D or
        G was not finite, put back the statistics of a skipped D) or on the host; BatchNorm statistics averaged."""
        if ok_d is not None and guard is not None:
            ok = ok_d & all_finite(g_vec)
            step_unless(self.opt_g, ~ok)
            dist.average_buffers(self.buffers)
            guard.restore_unless(ok_d)
            return StepOutput(torch.cat([d_vec, g_vec]), skipped=~ok)
        g_vec = g_vec.cpu()
        if not torch.isfinite(g_vec).all():
            self.opt_g.zero_grad(set_to_none=True)
            self.scaler.update()
            dist.average_buffers(self.buffers)
            return StepOutput(None, False)
        self.scaler.step(self.opt_g)
        self.scaler.update()
        dist.average_buffers(self.buffers)
        return StepOutput(torch.cat([d_vec, g_vec]))


def _noise_for(step: RatlipStep, i: int) -> torch.Generator:
    """Micro-batch ``i``'s noise: its own generator (the loop gives one per micro-batch), else the one."""
    return step.noises[i] if len(step.noises) > 1 else step.noises[0]


def _snapshot(buffers: list[torch.Tensor]) -> list[torch.Tensor]:
    return [b.clone() for b in buffers]


def _load(buffers: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    for b, v in zip(buffers, values):
        b.copy_(v)


def _load_mean(buffers: list[torch.Tensor], states: list[list[torch.Tensor]]) -> None:
    """Buffers <- the mean of ``states`` (what `dist.average_buffers` gives over that many processes);
    integer buffers (``num_batches_tracked``) are equal in every state and are copied."""
    for j, b in enumerate(buffers):
        if b.is_floating_point():
            b.copy_(torch.stack([st[j].float() for st in states]).mean(0).to(b.dtype))
        else:
            b.copy_(states[0][j])


def accumulated_step(step: RatlipStep, batch: dict[str, Any]) -> StepOutput:
    """One optimiser step over `accumulate` micro-batches of `train.batch_size`, equal to that many
    processes of one micro-batch each (`dist.average_gradients` of per-process means).

    Each micro-batch is its own "process": its mismatched pairs, MA-GP and BatchNorm statistics see
    only its images, its noise comes from its own generator, and its BatchNorm statistics start from
    the step's start; the step ends with their mean. The D pass runs G without a graph and the G
    pass runs it again (same weights, same output), so memory holds one micro-batch's graph; the
    second G forward's BatchNorm update is undone. Losses and non-finite handling follow the
    one-batch step; fp16 (GradScaler) scales each micro-batch's loss.
    """
    tc, dev, k = step.cfg.train, step.device, step.accumulate
    amp = lambda: autocast(dev, step.precision)  # noqa: E731
    images, all_tokens = batch["image"], batch["tokens"]
    if images.shape[0] % k:
        raise ValueError(f"a batch of {images.shape[0]} does not split into {k} micro-batches")
    b = images.shape[0] // k
    need_clip = tc.clip_sim_weight != 0
    fp16 = step.scaler.is_enabled()
    on_device = step.device_skip and not fp16
    g_buffers = _float_buffers(step.backbone, step.G, floating=False)
    start = _snapshot(step.all_buffers)

    # ---- D pass, micro-batch by micro-batch (d_pass makes D and head trainable)
    step.opt_d.zero_grad(set_to_none=True)
    micro, after_d, d_vecs = [], [], []
    for i in range(k):
        _load(step.all_buffers, start)
        f = step.d_pass(images[i * b:(i + 1) * b], all_tokens[i * b:(i + 1) * b], _noise_for(step, i), fake_graph=False)
        z, s, x_real, s_real, real_logits = f.z, f.s, f.x_real, f.s_real, f.real_logits
        mis_logits, fake_logits = f.mis_logits, f.fake_logits
        gp = ma_gp(real_logits, x_real, s_real, tc.ma_gp_weight, tc.ma_gp_power,
                   scale=step.scaler.get_scale() if fp16 else None)
        dl = d_hinge_loss(real_logits, fake_logits, mis_logits, gp)
        step.scaler.scale(dl.total / k).backward()
        d_vecs.append(torch.stack([dl.total, dl.real, dl.fake, dl.mis, dl.ma_gp]).detach().float())
        after_d.append(_snapshot(step.all_buffers))
        micro.append((z, s))
    d_vec = dist.average_gradients(step.d_params, torch.stack(d_vecs).mean(0))
    _load_mean(step.all_buffers, after_d)
    if on_device:
        ok_d = all_finite(d_vec)
        step_unless(step.opt_d, ~ok_d)
        guard = BufferGuard(step.all_buffers)
        guard.save()
    else:
        d_vec = d_vec.cpu()
        if not torch.isfinite(d_vec).all():
            step.opt_d.zero_grad(set_to_none=True)
            overflow = fp16 and bool(torch.isfinite(d_vec[1:4]).all())
            if fp16:
                step.scaler.update(step.scaler.get_scale() * step.scaler.get_backoff_factor())
            return StepOutput(None, overflow)
        step.scaler.step(step.opt_d)

    # ---- G pass: the updated D on the same fakes, recomputed with their graph
    set_trainable(step.D, False)
    set_trainable(step.head, False)
    step.opt_g.zero_grad(set_to_none=True)
    after_g, g_vecs = [], []
    for i, (z, s) in enumerate(micro):
        _load(step.all_buffers, after_d[i])
        g_state = _snapshot(g_buffers)
        with amp():
            fake = step.run_g(z, s)
            x_fake, pooled = step.D.encode(fake, with_pooled=need_clip)
            if need_clip and pooled is None:
                pooled = step.backbone.encode_image(fake)
            logits = step.head(step.D(x_fake), s)
        gl = g_loss(logits, s, pooled if need_clip else None, tc.clip_sim_weight)
        step.scaler.scale(gl.total / k).backward()
        _load(g_buffers, g_state)  # G's BatchNorm moves once per micro-batch, in the D pass (after backward: autograd saved them)
        g_vecs.append(torch.stack([gl.total, gl.clip_sim]).detach().float())
        after_g.append(_snapshot(step.all_buffers))
    g_vec = dist.average_gradients(step.g_params, torch.stack(g_vecs).mean(0))
    _load_mean(step.all_buffers, after_g)
    set_trainable(step.D, True)
    set_trainable(step.head, True)
    return step.finish_g(d_vec, g_vec, ok_d, guard) if on_device else step.finish_g(d_vec, g_vec)


def _release_update(scaler: torch.amp.GradScaler) -> bool:
    """The release's scaler update: back off or grow, then reset to 16384 below 64; True where the step
    was skipped (an inf/nan gradient: the update backs the scale off)."""
    before = scaler.get_scale()
    scaler.update()
    skipped = scaler.get_scale() < before
    if scaler.get_scale() < RELEASE_SCALER_MIN:
        scaler.update(RELEASE_SCALER_RESET)
    return skipped


def release_fp16_step(step: RatlipStep, batch: dict[str, Any]) -> StepOutput:
    """One step with the release's fp16 recipe (`train.fp16_recipe: release`): D and G each with its own
    GradScaler; an overflow skips that optimiser's update only (G still steps after a skipped D);
    MA-GP's gradients are taken of D's scaled output. The losses are read on the host (as the
    GradScaler does). A step where both updates were skipped is an overflow (nothing changed)."""
    tc, dev = step.cfg.train, step.device
    amp = lambda: autocast(dev, step.precision)  # noqa: E731
    f = step.d_pass(batch["image"], batch["tokens"], step.noise)
    s, x_real, s_real, real_logits, mis_logits = f.s, f.x_real, f.s_real, f.real_logits, f.mis_logits
    x_fake, pooled_fake, fake_logits, need_clip = f.x_fake, f.pooled_fake, f.fake_logits, f.need_clip
    gp = ma_gp(real_logits, x_real, s_real, tc.ma_gp_weight, tc.ma_gp_power, scale=step.scaler_d.get_scale())
    dl = d_hinge_loss(real_logits, fake_logits, mis_logits, gp)
    step.opt_d.zero_grad(set_to_none=True)
    step.scaler_d.scale(dl.total).backward()
    d_vec = dist.average_gradients(step.d_params, torch.stack([dl.total, dl.real, dl.fake, dl.mis, dl.ma_gp]).detach().float())
    step.scaler_d.step(step.opt_d)
    d_skipped = _release_update(step.scaler_d)

    set_trainable(step.D, False)
    set_trainable(step.head, False)
    with amp():
        fake_logits_g = step.head(step.D(x_fake), s)
    gl = g_loss(fake_logits_g, s, pooled_fake if need_clip else None, tc.clip_sim_weight)
    step.opt_g.zero_grad(set_to_none=True)
    step.scaler_g.scale(gl.total).backward()
    g_vec = dist.average_gradients(step.g_params, torch.stack([gl.total, gl.clip_sim]).detach().float())
    step.scaler_g.step(step.opt_g)
    g_skipped = _release_update(step.scaler_g)
    set_trainable(step.D, True)
    set_trainable(step.head, True)
    dist.average_buffers(step.buffers)
    if d_skipped and g_skipped:
        return StepOutput(None, overflow=True)
    return StepOutput(torch.cat([d_vec, g_vec]).cpu())
