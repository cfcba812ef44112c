"""One optimisation step of DM-GAN (``code/trainer.py``), as the family's `TrainingStep`.

With the frozen DAMSM encoders of `ratlip pretrain-text`:
  1. words, sentence = text encoder(captions) (no grad); mask = the captions' padding.
  2. fakes (one per stage), mu, logvar = G(z, sentence, words, mask) with eps drawn beside z.
  3. For each stage i: D_i's loss on (the real image at that stage's size, fake_i); Adam on D_i.
  4. G: the adversarial terms of every stage (each D_i after its update) + dmgan.damsm_weight x
     (words_loss + sent_loss) of the last stage's image under the frozen image encoder +
     dmgan.kl_weight x KL(mu, logvar); Adam on G. The loop's EMA follows G.

Real images: the dataset's crop (data.crop_size, the last stage's size), area-downsampled to the
earlier stages' sizes. Multi-process: gradients and losses averaged per optimiser
(`dist.average_gradients`), BatchNorm statistics after the step (`dist.average_buffers`).

Non-finite losses at a stage skip that stage's D update, the later ones and G's, as an early
return would, but decided on the device without a host sync (fp32/bf16, fused Adam;
`optim.step_unless`), with the BatchNorm statistics put back to what the early return left; the
loop reads the flag (`StepOutput.skipped`) when it logs. fp16 keeps the host check.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ratlip_cli import dist
from ratlip_cli.data.dataset import to_model_range
from ratlip_cli.config import Config
from ratlip_cli.models.dmgan.damsm_losses import same_caption_mask, sent_loss, words_loss
from ratlip_cli.models.dmgan.losses import discriminator_loss, generator_adv_loss, kl_loss
from ratlip_cli.models.dmgan.vocab import caption_lengths
from ratlip_cli.models.family import Networks, StepOutput, TrainingStep
from ratlip_cli.optim import BufferGuard, adam, all_finite, skips_on_device, step_unless
from ratlip_cli.precision import autocast

D_COLUMNS = ("d_loss", "d_real", "d_fake", "d_mis")
G_COLUMNS = ("g_loss", "g_damsm", "g_kl")


class DmganStep(TrainingStep):
    """D updates (one per stage), then the G update; see the module docstring."""

    loss_columns = (*D_COLUMNS, *G_COLUMNS)

    def __init__(self, cfg: Config, nets: Networks, device: torch.device, noise: torch.Generator) -> None:
        from ratlip_cli.models.registry import get_family  # this step serves the dmgan, ecagan and caegan families

        get_family(cfg).refuse_accumulation(cfg, dist.get_world_size())
        dm = cfg.dmgan
        self.cfg, self.nets, self.device, self.noise = cfg, nets, device, noise
        self.precision = cfg.train.precision
        self.wrapper = nets.trainable["generator"]
        self.G = self.wrapper.generator
        self.D = nets.trainable["discriminator"]
        self.encoders = nets.text.encoders
        self.sizes = self.G.sizes
        self.g_params = list(self.G.parameters())
        self.d_params = [list(d.parameters()) for d in self.D]
        self.buffers = [b for m in (self.G, self.D) for b in m.buffers() if b.is_floating_point()]
        self.all_buffers = [b for m in (self.G, self.D) for b in m.buffers()]
        betas = (float(dm.betas[0]), float(dm.betas[1]))
        self.opt_g = adam(self.g_params, lr=dm.lr_g, betas=betas)
        self.opt_d = [adam(p, lr=dm.lr_d, betas=betas) for p in self.d_params]
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "amp_fp16")
        d = self.encoders.dcfg
        self.gammas = (d.gamma1, d.gamma2, d.gamma3)
        # Skip non-finite steps on the device (no host sync) where every optimiser can (fused Adam).
        self.device_skip = all(skips_on_device(o) for o in (self.opt_g, *self.opt_d))

    def generator_forward(self, z: torch.Tensor, sentence: torch.Tensor, words: torch.Tensor, mask: torch.Tensor,
                          eps: torch.Tensor, real: torch.Tensor):
        """G's forward pass in a step (families built on DM-GAN may also read the real image)."""
        return self.G(z, sentence, words, mask, eps=eps)

    def extra_generator_losses(self, fakes: list[torch.Tensor], reals: list[torch.Tensor], sentence: torch.Tensor,
                               words: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Weighted generator terms a derived family adds (logged after g_kl, in `loss_columns` order)."""
        return []

    @property
    def ema_source(self) -> nn.Module:
        return self.wrapper

    def set_precision(self, precision: str) -> None:
        self.precision = precision
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "amp_fp16")

    def train(self) -> None:
        self.G.train()
        self.D.train()

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.wrapper.state_dict(), "discriminator": self.D.state_dict(), "head": {},
                "opt_g": self.opt_g.state_dict(), "opt_d": [o.state_dict() for o in self.opt_d],
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.wrapper.load_state_dict(state["generator"])
            self.D.load_state_dict(state["discriminator"])
            self.opt_g.load_state_dict(state["opt_g"])
            if len(state["opt_d"]) != len(self.opt_d):
                raise ValueError(f"{len(state['opt_d'])} discriminator optimisers, expected {len(self.opt_d)}")
            for opt, s in zip(self.opt_d, state["opt_d"]):
                opt.load_state_dict(s)
        except RuntimeError as exc:  # shape mismatches
            raise ValueError((str(exc).strip().splitlines() or ["state does not fit"])[0][:200]) from None
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def ca_loss(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """Conditioning augmentation's loss: KL(N(mu, sigma^2) || N(0, I)) (DM-GAN's code and paper, ECAGAN's)."""
        return kl_loss(mu, logvar)

    def describe(self, row: dict[str, Any]) -> str:
        return (f"d {row['d_loss']:.4f} (real {row['d_real']:.3f} fake {row['d_fake']:.3f} mis {row['d_mis']:.3f}) "
                f"g {row['g_loss']:.4f} (damsm {row['g_damsm']:.3f} kl {row['g_kl']:.4f})")

    def __call__(self, batch: dict[str, Any]) -> StepOutput:
        dm, dev = self.cfg.dmgan, self.device
        amp = lambda: autocast(dev, self.precision)  # noqa: E731
        real = to_model_range(batch["image"].to(dev, non_blocking=True))
        tokens = batch["tokens"].to(dev, non_blocking=True)
        b = real.shape[0]
        lens = caption_lengths(batch["tokens"])  # host data: from the batch before it moves to the device
        with torch.no_grad():
            words, sentence = self.encoders.text(tokens, lens)
        words, sentence = words.float(), sentence.float()
        mask = tokens[:, : words.shape[2]] == 0
        exclude = same_caption_mask(list(batch["caption"])).to(dev, non_blocking=True) if "caption" in batch else None
        reals = [real if s == real.shape[-1] else F.interpolate(real, size=(s, s), mode="area") for s in self.sizes]
        z = torch.randn(b, dm.z_dim, generator=self.noise).to(dev, non_blocking=True)
        eps = torch.randn(b, dm.condition_dim, generator=self.noise).to(dev, non_blocking=True)
        with amp():
            fakes, _maps, mu, logvar = self.generator_forward(z, sentence, words, mask, eps, real)
        fakes = [f.float() for f in fakes]
        fp16 = self.scaler.is_enabled()
        on_device = self.device_skip and not fp16
        # On the device: ok = every stage so far finite; the guard keeps the statistics at the first that is not.
        ok = torch.ones((), dtype=torch.bool, device=dev) if on_device else None
        guard = BufferGuard(self.all_buffers)

        parts = torch.zeros(4, device=dev) if on_device else torch.zeros(4)
        for i, (net, opt) in enumerate(zip(self.D, self.opt_d)):
            net.requires_grad_(True)
            with amp():
                dl = discriminator_loss(net, reals[i], fakes[i], sentence, dm.loss_formulas)
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(dl.total).backward()
            vec = torch.stack([dl.total, dl.real, dl.fake, dl.wrong]).detach().float()
            vec = dist.average_gradients(self.d_params[i], vec)
            if ok is not None:
                guard.save(ok)
                ok = ok & all_finite(vec)
                step_unless(opt, ~ok)
                parts += vec
                continue
            vec = vec.cpu()
            if not torch.isfinite(vec).all():
                opt.zero_grad(set_to_none=True)
                if fp16:
                    self.scaler.update(self.scaler.get_scale() * self.scaler.get_backoff_factor())
                return StepOutput(None, fp16)
            self.scaler.step(opt)
            parts += vec

        for net in self.D:
            net.requires_grad_(False)
        with amp():
            adv = sum(generator_adv_loss(net, f, sentence, dm.loss_formulas) for net, f in zip(self.D, fakes))
            region, code = self.encoders.image(fakes[-1])
        w0, w1, _ = words_loss(region.float(), words, lens, exclude, *self.gammas)
        s0, s1 = sent_loss(code.float(), sentence, exclude, self.gammas[2])
        damsm = dm.damsm_weight * (w0 + w1 + s0 + s1)
        kl = dm.kl_weight * self.ca_loss(mu.float(), logvar.float())
        extra = self.extra_generator_losses(fakes, reals, sentence, words, mask)
        total = adv + damsm + kl + sum(extra, torch.zeros((), device=dev))
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        g_vec = torch.stack([total, damsm, kl, *extra]).detach().float()
        g_vec = dist.average_gradients(self.g_params, g_vec)
        for net in self.D:
            net.requires_grad_(True)
        if ok is not None:
            ok_g = ok & all_finite(g_vec)
            step_unless(self.opt_g, ~ok_g)
            dist.average_buffers(self.buffers)
            guard.restore_unless(ok)
            return StepOutput(torch.cat([parts, g_vec]), skipped=~ok_g)
        g_vec = g_vec.cpu()
        if not torch.isfinite(g_vec).all():
            self.opt_g.zero_grad(set_to_none=True)
            self.scaler.update()
            dist.average_buffers(self.buffers)
            return StepOutput(None, False)
        self.scaler.step(self.opt_g)
        self.scaler.update()
        dist.average_buffers(self.buffers)
        return StepOutput(torch.cat([parts, g_vec]))
