"""CLIP score (mean image-caption cosine x 100) and CLIP R-precision with the evaluation CLIP.

The evaluation CLIP (`eval.clip_arch` / `eval.clip_weights`, ViT-B/32 by default) is independent
of the CLIP a model was trained with. Images go through open_clip's own eval preprocessing
(bicubic resize of the shorter side, centre crop, CLIP normalisation) from uint8 RGB arrays.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ratlip_cli.console import warn
from ratlip_cli.errors import RatlipError

RANDOM_CLIP_SEED = 0
# Every table, CSV row and plot that shows CLIP score / R-precision carries one of these notes.
RANDOM_CLIP_NOTE = "RANDOM CLIP: CLIP score and R-precision are meaningless"
IN_DOMAIN_NOTE = "{label}: not comparable with published numbers"


def clip_metrics_note(eval_clip: str) -> str:
    """The warning that belongs next to CLIP metrics scored with the CLIP described by `eval_clip`
    (a ClipScorer identity as stored in eval/ablation rows); "" for a pretrained CLIP."""
    if " random(seed " in eval_clip or eval_clip.endswith(" random"):
        return RANDOM_CLIP_NOTE
    if eval_clip.startswith("in-domain CLIP ("):
        return IN_DOMAIN_NOTE.format(label=eval_clip.split(")", 1)[0] + ")")
    return ""


class ClipScorer:
    """Normalised CLIP embeddings of uint8 images and of texts; `identity` records arch + weights."""

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", identity: str = "") -> None:
        """`identity` names arch + weights; in-domain CLIPs start with "in-domain CLIP (<dataset>)"."""
        import open_clip

        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.identity = identity
        pcfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        kwargs = {k: pcfg[k] for k in ("mean", "std", "resize_mode", "interpolation", "fill_color") if k in pcfg}
        self.transform = open_clip.image_transform(model.visual.image_size, is_train=False, **kwargs)

    @property
    def note(self) -> str:
        """The warning CLIP metrics from this scorer must carry ("" for a pretrained CLIP)."""
        return clip_metrics_note(self.identity)

    @torch.no_grad()
    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(B, E) unit-norm float32 CPU embeddings of uint8 (H, W, 3) images."""
        batch = torch.stack([self.transform(Image.fromarray(img)) for img in images]).to(self.device)
        feats = self.model.encode_image(batch).float()
        return torch.nn.functional.normalize(feats, dim=-1).cpu()

    @torch.no_grad()
    def embed_images_authors(self, images: torch.Tensor) -> torch.Tensor:
        """(B, E) unit-norm float32 CPU embeddings of generator-range images (B, 3, H, W) through the
        release's `transf_to_CLIP_input` (tobran/GALIP `code/lib/utils.py`): x * 0.5 + 0.5, a nearest
        resize to the CLIP input size, (x + 1) * 0.5, then CLIP's mean/std (the double range mapping)."""
        size = self.model.visual.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        pcfg = dict(getattr(self.model.visual, "preprocess_cfg", {}) or {})
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        mean = torch.tensor(pcfg.get("mean", OPENAI_DATASET_MEAN), device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(pcfg.get("std", OPENAI_DATASET_STD), device=self.device).view(1, 3, 1, 1)
        x = torch.nn.functional.interpolate(images.to(self.device).float() * 0.5 + 0.5, size=size)
        x = ((x + 1) * 0.5 - mean) / std
        feats = self.model.encode_image(x.float()).float()
        return torch.nn.functional.normalize(feats, dim=-1).cpu()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """(N, E) unit-norm float32 CPU embeddings of texts (truncated to the context length)."""
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            out.append(torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        if not out:
            return torch.empty(0, 0)
        return torch.cat(out)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's tensors (names, dtypes, shapes, values): the same for the same weights,
    whatever file they were read from (two files of one CLIP may differ in their headers)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _identity(arch: str, weights: str, model: torch.nn.Module) -> str:
    from ratlip_cli.weights import is_file_spec

    if weights == "random":
        return f"{arch} random(seed {RANDOM_CLIP_SEED})"
    if is_file_spec(weights):
        return f"{arch} weights sha256:{weights_fingerprint(model)[:12]}"
    return f"{arch} {weights}"


@contextmanager
def _quiet_root_logger(enabled: bool):
    """Hide open_clip's root-logger "No pretrained weights loaded" (we warn about random weights ourselves)."""
    if not enabled:
        yield
        return
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _matching_activation(arch: str, weights: str) -> str:
    """OpenAI's CLIP weights need QuickGELU: for a tag that says so on an arch without it (open_clip
    would build GELU and load the weights into it silently), use the `-quickgelu` twin."""
    import open_clip

    from ratlip_cli.weights import is_file_spec, register_model_configs

    register_model_configs()
    if weights == "random" or arch.endswith("-quickgelu"):
        return arch
    twin = f"{arch}-quickgelu"
    if twin not in open_clip.list_models() or (open_clip.get_model_config(arch) or {}).get("quick_gelu"):
        return arch
    if is_file_spec(weights):
        warn(
            f"eval.clip_arch {arch} uses GELU; if {Path(weights).name} holds OpenAI's CLIP weights, "
            f"set eval.clip_arch={twin}"
        )
        return arch
    if (open_clip.get_pretrained_cfg(arch, weights) or {}).get("quick_gelu"):
        warn(f"evaluation CLIP: '{weights}' weights were trained with QuickGELU, using {twin} instead of {arch}")
        return twin
    return arch


def load_eval_clip(
    arch: str, weights: str, cache_dir: str = "", device: str | torch.device = "cpu", label: str = ""
) -> ClipScorer:
    """The evaluation CLIP via `ratlip_cli.weights.load_clip`, with errors naming the `eval.*` keys.

    `random` weights are drawn with a fixed seed so the (meaningless, test-only) scores repeat.
    `label` (e.g. "in-domain CLIP (shapes)") is put in front of the scorer's identity.
    """
    from ratlip_cli.weights import clip_source, is_file_spec, load_clip

    arch = _matching_activation(arch, weights)
    if weights != "random":
        if is_file_spec(weights):
            if not Path(weights).expanduser().is_file():
                raise RatlipError(
                    f"evaluation CLIP weights file not found: {weights} "
                    "(set --set eval.clip_weights=/path/to/open_clip_model.safetensors)"
                )
        else:
            where, available = clip_source(arch, weights, cache_dir)
            if not available:
                raise RatlipError(
                    f"evaluation CLIP {arch} '{weights}' is unavailable ({where}): copy open_clip_model.safetensors "
                    f"for {arch} to this machine and pass --set eval.clip_weights=/path/to/open_clip_model.safetensors"
                )
    try:
        with torch.random.fork_rng(devices=[]), _quiet_root_logger(weights == "random"):
            torch.manual_seed(RANDOM_CLIP_SEED)
            model, tokenizer = load_clip(arch, weights, cache_dir, device)
    except RatlipError as exc:
        message = str(exc).replace("clip.weights", "eval.clip_weights").replace("(clip.arch)", "(eval.clip_arch)")
        raise RatlipError(message) from None
    if weights == "random":
        warn(f"evaluation CLIP {arch} has random weights: CLIP score and R-precision are meaningless (tests only)")
    identity = _identity(arch, weights, model)
    return ClipScorer(model, tokenizer, device, f"{label}: {identity}" if label else identity)


def clip_score(image_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """Mean cosine similarity of matching rows x 100 (no clipping at 0)."""
    if image_emb.shape != text_emb.shape or image_emb.shape[0] == 0:
        raise RatlipError(
            f"CLIP score needs one caption per image, got {tuple(image_emb.shape)} vs {tuple(text_emb.shape)}"
        )
    img = torch.nn.functional.normalize(image_emb.double(), dim=-1)
    txt = torch.nn.functional.normalize(text_emb.double(), dim=-1)
    return float((img * txt).sum(-1).mean() * 100.0)


def sample_negatives(
    excluded: Sequence[set[int] | frozenset[int]], pool_size: int, num_negatives: int, seed: int = 0
) -> np.ndarray:
    """For each image, `num_negatives` distinct pool indices not in its excluded set.

    Deterministic given `seed` (one numpy generator, images in order). When some image has fewer
    allowed texts than asked, every image gets the largest count all can have (see the shape).
    """
    if num_negatives < 1:
        raise RatlipError("eval.r_precision_candidates must be at least 2 (the true caption and one other)")
    allowed = min((pool_size - len(e) for e in excluded), default=0)
    k = min(num_negatives, allowed)
    if k < 1:
        raise RatlipError("CLIP R-precision needs captions of other images in the pool; the split has none")
    if k < num_negatives:
        warn(
            f"CLIP R-precision: only {k} other captions available per image, "
            f"using {k + 1} candidates instead of {num_negatives + 1}"
        )
    rng = np.random.default_rng(seed)
    out = np.empty((len(excluded), k), dtype=np.int64)
    for i, excl in enumerate(excluded):
        draw = rng.choice(pool_size, size=min(pool_size, k + len(excl)), replace=False)
        if excl:
            draw = draw[~np.isin(draw, np.fromiter(excl, dtype=np.int64, count=len(excl)))]
        out[i] = draw[:k]
    return out


def r_precision(
    image_emb: torch.Tensor, true_emb: torch.Tensor, pool_emb: torch.Tensor, negatives: np.ndarray, chunk: int = 1024
) -> float:
    """Top-1 CLIP R-precision in percent: the share of images whose own caption scores strictly
    higher than every one of its sampled negatives (`negatives` indexes rows of `pool_emb`)."""
    img = torch.nn.functional.normalize(image_emb.float(), dim=-1)
    true_sim = (img * torch.nn.functional.normalize(true_emb.float(), dim=-1)).sum(-1)
    pool = torch.nn.functional.normalize(pool_emb.float(), dim=-1)
    neg_idx = torch.from_numpy(negatives)
    hits = 0
    for start in range(0, img.shape[0], chunk):
        sl = slice(start, start + chunk)
        neg = pool[neg_idx[sl]]  # (b, k, E)
        neg_sim = torch.einsum("be,bke->bk", img[sl], neg)
        hits += int((true_sim[sl] > neg_sim.max(dim=1).values).sum())
    return 100.0 * hits / max(img.shape[0], 1)
