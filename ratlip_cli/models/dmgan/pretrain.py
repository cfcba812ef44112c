"""`ratlip pretrain-text`: train AttnGAN's DAMSM text and image encoders jointly on a prepared dataset.

One step (AttnGAN ``pretrain_DAMSM.py``): words and sentence vectors of the batch's captions,
region features and image codes of its images, loss = words_loss (both directions) + sent_loss
(both directions), backward, the text encoder's gradient norm clipped to ``damsm.rnn_grad_clip``,
Adam step. The learning rate is multiplied by ``damsm.lr_decay`` after every epoch while it is
above a tenth of ``damsm.lr``. Captions with the same text in one batch are not counted as
mismatches (AttnGAN uses CUB's class ids for this).

The output folder (``damsm.out``, default ``<train.runs_dir>/damsm-<data.name>``) holds
``checkpoint.pt`` (atomic; rerunning the command continues from it, bit for bit on CPU),
``metrics.csv``, and, when the run ends, the encoders (`encoders.save_encoders`) with the
held-out retrieval metrics.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ratlip_cli.config import Config, from_dict, to_dict
from ratlip_cli.console import console, warn
from ratlip_cli.data import TextImageDataset
from ratlip_cli.data.ensure import ensure_dataset
from ratlip_cli.data.sampler import EpochBatchSampler
from ratlip_cli.data.split import read_split
from ratlip_cli.dist import resolve_device
from ratlip_cli.errors import RatlipError
from ratlip_cli.files import torch_save
from ratlip_cli.models.dmgan.damsm_losses import damsm_loss, same_caption_mask
from ratlip_cli.models.dmgan.files import (
    ARCHITECTURE_KEYS,
    build_encoders,
    image_state,
    image_trunk,
    load_image_state,
    save_encoders,
)
from ratlip_cli.models.dmgan.retrieval import damsm_retrieval, load_split_images
from ratlip_cli.models.dmgan.vocab import Vocabulary, caption_lengths
from ratlip_cli.optim import adam
from ratlip_cli.progress import progress_bar
from ratlip_cli.rng import capture_rng, restore_rng
from ratlip_cli.seeds import derive_seed
from ratlip_cli.signals import StopFlag

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
METRIC_COLUMNS = ["step", "epoch", "lr", "loss", "w_loss", "s_loss", "images_per_s", "elapsed_s"]
CKPT_FORMAT = "ratlip-damsm-checkpoint"


def output_dir(cfg: Config) -> Path:
    """Where `ratlip pretrain-text` writes (and where the dmgan family looks by default)."""
    return Path(cfg.damsm.out) if cfg.damsm.out else Path(cfg.train.runs_dir) / f"damsm-{cfg.data.name}"


def lr_at(dcfg, epoch: int) -> float:
    """AttnGAN's schedule: after each epoch, lr *= decay while lr > lr0 / 10."""
    lr = dcfg.lr
    for _ in range(epoch):
        if lr > dcfg.lr / 10.0:
            lr *= dcfg.lr_decay
    return lr


@dataclass
class PretrainResult:
    """What a `pretrain_text` call did."""

    out: Path
    step: int
    stopped_by: str
    metrics: dict[str, Any]


def _architecture(cfg: Config) -> dict[str, Any]:
    return {k: getattr(cfg.damsm, k) for k in ARCHITECTURE_KEYS} | {
        "data.name": cfg.data.name, "data.load_size": cfg.data.load_size, "data.crop_size": cfg.data.crop_size}


class _Metrics:
    def __init__(self, path: Path, keep_until: int | None) -> None:
        self.path = path
        rows = []
        if keep_until is not None and path.is_file():
            with open(path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= keep_until]
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def pretrain_text(cfg: Config, restart: bool = False, on_step=None) -> PretrainResult:
    """Train (or continue) the DAMSM encoders of ``cfg``; returns where they are and the held-out metrics."""
    dcfg = cfg.damsm
    out = output_dir(cfg)
    device = resolve_device(cfg.train.device)
    prepared = ensure_dataset(cfg)
    if "train" not in prepared.splits:
        raise RatlipError(f"dataset {cfg.data.root} has no train split; DAMSM pretraining needs one")
    ckpt_path = out / CHECKPOINT
    state = None
    if ckpt_path.is_file() and not restart:
        try:
            state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a foreign or damaged file
            raise RatlipError(f"{ckpt_path} is not a readable checkpoint ({type(exc).__name__}); "
                              "rerun with --restart to start over") from None
        if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
            raise RatlipError(f"{ckpt_path} is not a DAMSM checkpoint; choose another --out or --restart")
        old = from_dict(state["config"])
        if _architecture(old) != _architecture(cfg):
            changed = sorted(k for k, v in _architecture(cfg).items() if _architecture(old).get(k) != v)
            raise RatlipError(f"{out} holds DAMSM pretraining with other settings ({', '.join(changed)} changed); "
                              "pass --restart to start over or choose another --out")
    out.mkdir(parents=True, exist_ok=True)

    if state is not None:
        vocab = Vocabulary.from_dict(state["vocabulary"])
    else:
        vocab = Vocabulary.build(read_split(prepared, "train").all_captions(), dcfg.words_num)
    torch.manual_seed(derive_seed(dcfg.seed, "damsm-init"))
    text, image = build_encoders(dcfg, vocab, image_trunk(dcfg))
    text.to(device).train()
    image.to(device).train()
    params = list(text.parameters()) + [p for p in image.parameters() if p.requires_grad]
    betas = (float(dcfg.betas[0]), float(dcfg.betas[1]))


    dataset = TextImageDataset(prepared, "train", cfg.data, vocab, train=True,
                               seed=derive_seed(dcfg.seed, "damsm-data") % (2**32))
    sampler = EpochBatchSampler(len(dataset), dcfg.batch_size, dcfg.seed)
    spe = sampler.steps_per_epoch
    if spe == 0:
        raise RatlipError(f"the train split has {len(dataset)} images, fewer than one batch of {dcfg.batch_size}; "
                          "lower damsm.batch_size")
    step = epoch = step_in_epoch = 0
    elapsed = 0.0
    opt = adam(params, lr=lr_at(dcfg, 0), betas=betas)
    torch.manual_seed(derive_seed(dcfg.seed, "damsm-torch"))
    if state is not None:
        text.load_state_dict(state["text"])
        load_image_state(image, state["image"], dcfg.image_encoder)
        opt.load_state_dict(state["opt"])
        step, epoch, step_in_epoch = int(state["step"]), int(state["epoch"]), int(state["step_in_epoch"])
        elapsed = float(state["elapsed_s"])
        restore_rng(state["rng"])
        console.print(f"continuing DAMSM pretraining in {out} from step {step}", highlight=False)
    else:
        console.print(f"DAMSM pretraining in {out} (vocabulary: {len(vocab)} words from the training captions)",
                      highlight=False)
    if dcfg.image_encoder == "cnn":
        console.print("image encoder: a small CNN trained with the text encoder (damsm.image_encoder=cnn), not Inception",
                      highlight=False)
    metrics = _Metrics(out / METRICS, keep_until=step if state is not None else None)

    def save() -> None:
        torch_save({
            "format": CKPT_FORMAT, "step": step, "epoch": epoch, "step_in_epoch": step_in_epoch,
            "elapsed_s": elapsed, "text": text.state_dict(), "image": image_state(image, dcfg.image_encoder),
            "opt": opt.state_dict(), "rng": capture_rng(), "config": to_dict(cfg), "vocabulary": vocab.to_dict(),
        }, ckpt_path)

    plans = [dcfg.epochs * spe] if dcfg.epochs > 0 else []
    if dcfg.max_steps > 0:
        plans.append(dcfg.max_steps)
    planned = min(plans) if plans else None

    def done() -> str | None:
        if dcfg.max_steps > 0 and step >= dcfg.max_steps:
            return "max_steps"
        if dcfg.epochs > 0 and epoch >= dcfg.epochs:
            return "epochs"
        if dcfg.max_minutes > 0 and elapsed >= dcfg.max_minutes * 60:
            return "max_minutes"
        return None


    acc = {"loss": 0.0, "w": 0.0, "s": 0.0, "n": 0, "t": 0.0, "images": 0}
    stop_reason = done()
    t0, elapsed0 = time.perf_counter(), elapsed
    bar = progress_bar("[bold]DAMSM epoch {task.fields[epoch]}", extra=("{task.fields[info]}",), elapsed=True,
                       remaining=False)
    with StopFlag() as stop, bar:
        task = bar.add_task("damsm", total=planned, completed=step, epoch=epoch + 1, info="")
        while stop_reason is None:
            if step_in_epoch == 0 and dcfg.reset_optimizer_each_epoch:
                opt = adam(params, lr=lr_at(dcfg, epoch), betas=betas)
            for group in opt.param_groups:
                group["lr"] = lr_at(dcfg, epoch)
            sampler.set_position(epoch, step_in_epoch)
            dataset.set_epoch(epoch)
            # Its own generator: creating a loader must not draw from the global RNG (exact resumption).
            gen = torch.Generator().manual_seed(derive_seed(dcfg.seed, "damsm-workers", epoch, step_in_epoch))
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, generator=gen,
                                                 num_workers=max(0, cfg.data.num_workers))
            t_fetch = time.perf_counter()
            for batch in loader:
                tokens = batch["tokens"].to(device)
                words, sentence = text(tokens, caption_lengths(tokens))
                region, code = image(batch["image"].to(device))
                exclude = same_caption_mask(list(batch["caption"])).to(device)
                loss = damsm_loss(region, code, words, sentence, caption_lengths(tokens), exclude,
                                  dcfg.gamma1, dcfg.gamma2, dcfg.gamma3)
                opt.zero_grad(set_to_none=True)
                loss.total.backward()
                torch.nn.utils.clip_grad_norm_(text.parameters(), dcfg.rnn_grad_clip)
                opt.step()
                step += 1
                step_in_epoch += 1
                acc["loss"] += float(loss.total.detach())
                acc["w"] += float(loss.words.detach())
                acc["s"] += float(loss.sentence.detach())
                acc["n"] += 1
                acc["images"] += tokens.shape[0]
                acc["t"] += time.perf_counter() - t_fetch
                if step_in_epoch >= spe:
                    epoch += 1
                    step_in_epoch = 0
                elapsed = elapsed0 + time.perf_counter() - t0
                if dcfg.log_every > 0 and step % dcfg.log_every == 0:
                    n = acc["n"]
                    row = {"step": step, "epoch": round(epoch + step_in_epoch / spe, 4), "lr": opt.param_groups[0]["lr"],
                           "loss": acc["loss"] / n, "w_loss": acc["w"] / n, "s_loss": acc["s"] / n,
                           "images_per_s": round(acc["images"] / acc["t"], 2) if acc["t"] else "",
                           "elapsed_s": round(elapsed, 1)}
                    metrics.write(row)
                    info = f"loss {row['loss']:.3f} (words {row['w_loss']:.3f} sentence {row['s_loss']:.3f})"
                    bar.update(task, info=info)
                    if not console.is_terminal:
                        console.print(f"step {step}" + (f"/{planned}" if planned else "") + f" | {info}", highlight=False)
                    acc = {"loss": 0.0, "w": 0.0, "s": 0.0, "n": 0, "t": 0.0, "images": 0}
                if dcfg.checkpoint_every > 0 and step % dcfg.checkpoint_every == 0:
                    save()
                bar.update(task, completed=step, epoch=epoch + 1)
                if on_step is not None:
                    on_step(step)
                stop_reason = done() or stop.signal_name
                if stop_reason is not None or step_in_epoch == 0:
                    break
                t_fetch = time.perf_counter()
    save()
    if stop_reason in ("SIGINT", "SIGTERM"):
        console.print(f"stopped by {stop_reason} at step {step}; rerun the same command to continue", highlight=False)
        return PretrainResult(out, step, stop_reason, {})
    result = held_out_metrics(cfg, prepared, text, image, vocab, device)
    save_encoders(out, vocab, text, image, dcfg, cfg.data.name, step, result)
    how = {"max_steps": f"reached damsm.max_steps={dcfg.max_steps}", "epochs": f"finished {dcfg.epochs} epochs",
           "max_minutes": f"reached damsm.max_minutes={dcfg.max_minutes:g}"}.get(stop_reason, stop_reason)
    console.print(f"{how} at step {step}; encoders saved in {out}", highlight=False)
    if result:
        console.print(
            f"held-out '{result['split']}' split ({result['images']} images): DAMSM R-precision "
            f"{result['damsm_r_precision']:.2f}% (top-1 of {result['r_precision_candidates']}), recall@1 image->text "
            f"{result['image_to_text_r1']:.2f}%, text->image {result['text_to_image_r1']:.2f}%", highlight=False)
    return PretrainResult(out, step, stop_reason, result)


def held_out_metrics(cfg: Config, prepared, text, image, vocab, device) -> dict[str, Any]:
    """DAMSM retrieval on the test split (empty when the dataset has none)."""
    if "test" not in prepared.splits:
        warn(f"dataset {cfg.data.root} has no test split: no held-out retrieval figures")
        return {}
    split = read_split(Path(cfg.data.root).expanduser(), "test")
    images = load_split_images(split, cfg.data)
    res = damsm_retrieval(text, image, vocab, split, images, device, cfg.eval.r_precision_candidates, cfg.damsm.seed)
    return {"split": "test", **res}
