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

from typing import Any

import torch
from torch import nn

from ratlip_cli import dist
from ratlip_cli.data.dataset import to_model_range
from ratlip_cli.config import Config
from ratlip_cli.losses import d_hinge_loss, g_loss, ma_gp, mismatched
from ratlip_cli.models.family import Networks, StepOutput, TrainingStep
from ratlip_cli.optim import BufferGuard, adam, all_finite, skips_on_device, step_unless
from ratlip_cli.models.params import load_trainable_state_dict, set_trainable, trainable_parameters, trainable_state_dict
from ratlip_cli.precision import autocast
from ratlip_cli.train.compiling import compile_decision, generator_runner
from ratlip_cli.train.run import metrics_columns

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


class RatlipStep(TrainingStep):
    """D update then G update on one batch; see the module docstring."""

    loss_columns = (*D_COLUMNS, *G_COLUMNS)

    def __init__(self, cfg: Config, nets: Networks, device: torch.device, noise: torch.Generator) -> None:
        tc = cfg.train
        self.cfg, self.nets, self.device, self.noise = cfg, nets, device, noise
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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_trainable_state_dict(self.G, state["generator"])
        load_trainable_state_dict(self.D, state["discriminator"])
        load_trainable_state_dict(self.head, state["head"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def describe(self, row: dict[str, Any]) -> str:
        return (f"d {row['d_loss']:.4f} (real {row['d_real']:.3f} fake {row['d_fake']:.3f} mis {row['d_mis']:.3f} "
                f"gp {row['ma_gp']:.4f}) g {row['g_loss']:.4f}")

    def __call__(self, batch: dict[str, Any]) -> StepOutput:
        tc, dev = self.cfg.train, self.device
        amp = lambda: autocast(dev, self.precision)  # noqa: E731
        cl = torch.channels_last if self.channels_last else torch.contiguous_format
        real = to_model_range(batch["image"].to(dev, non_blocking=True)).to(memory_format=cl)
        tokens = batch["tokens"].to(dev, non_blocking=True)
        b = real.shape[0]
        with torch.no_grad(), amp():
            s = self.backbone.encode_text(tokens)[0]
        s = s.float()
        z = torch.randn(b, self.cfg.model.z_dim, generator=self.noise).to(dev, non_blocking=True)
        need_clip = tc.clip_sim_weight != 0

        # ---- D step
        set_trainable(self.D, True)
        set_trainable(self.head, True)
        with amp():
            x_real, _ = self.D.encode(real, with_pooled=False)
        x_real = x_real.detach().requires_grad_(True)
        s_real = s.detach().requires_grad_(True)
        with amp():
            dmap_real = self.D(x_real)
            real_logits = self.head(dmap_real, s_real)
            mis_logits = self.head(dmap_real, mismatched(s))
            fake = self.run_g(z, s)
            x_fake, pooled_fake = self.D.encode(fake, with_pooled=need_clip)
            if need_clip and pooled_fake is None:  # a CNN discriminator: the CLIP loss reads the frozen CLIP itself
                pooled_fake = self.backbone.encode_image(fake)
            fake_logits = self.head(self.D(x_fake.detach()), s)
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
