"""DAMSM retrieval on a held-out split: AttnGAN's R-precision (1 true + 99 random captions) and recall@1.

Images are the split's images (resize + centre crop as in evaluation); each image's true caption
is its first one. Wrong captions are drawn from the split's caption pool excluding every caption
of every image that has the true caption (`ReferenceSplit.pool`), with the same sampler as CLIP
R-precision. Scores are cosines of the image code and the sentence vector (AttnGAN's protocol).
"""

from __future__ import annotations

from typing import Any

import torch

from ratlip_cli.config import DataConfig
from ratlip_cli.models.dmgan.damsm import ImageEncoder, TextEncoder
from ratlip_cli.models.dmgan.vocab import Vocabulary, caption_lengths


@torch.no_grad()
def encode_sentences(text: TextEncoder, vocab: Vocabulary, captions: list[str], device: torch.device,
                     batch_size: int = 256) -> torch.Tensor:
    """(N, D) sentence vectors on the CPU."""
    out = []
    for start in range(0, len(captions), batch_size):
        tokens = vocab(captions[start : start + batch_size]).to(device)
        out.append(text(tokens, caption_lengths(tokens))[1].float().cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_images(image: ImageEncoder, images: torch.Tensor, device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """(N, D) global image codes on the CPU of (N, 3, H, W) images in [-1, 1]."""
    return torch.cat([image(images[s : s + batch_size].to(device))[1].float().cpu()
                      for s in range(0, len(images), batch_size)])


def load_split_images(split, data_cfg: DataConfig) -> torch.Tensor:
    """The split's images as evaluation sees them (resize, centre crop), (N, 3, S, S) in [-1, 1]."""
    from ratlip_cli.data.dataset import eval_image

    return torch.stack([eval_image(p, data_cfg.load_size, data_cfg.crop_size) for p in split.paths])


def damsm_retrieval(text: TextEncoder, image: ImageEncoder, vocab: Vocabulary, split, images: torch.Tensor,
                    device: torch.device, candidates: int = 100, seed: int = 0,
                    image_codes: torch.Tensor | None = None) -> dict[str, Any]:
    """R-precision (%, top-1 of ``candidates``) and recall@1 both ways (%), with the counts used.

    ``images`` are the split's images in order (or pass their ``image_codes``); ``split`` is a
    `ratlip_cli.evaluate.ReferenceSplit`.
    """
    from ratlip_cli.metrics.clip_score import r_precision, sample_negatives

    was_training = (text.training, image.training)
    text.eval()
    image.eval()
    try:
        keep = [i for i, caps in enumerate(split.captions) if caps]
        pool, excluded = split.pool()
        index = {t: i for i, t in enumerate(pool)}
        pool_emb = encode_sentences(text, vocab, pool, device)
        codes = image_codes if image_codes is not None else encode_images(image, images, device)
        codes = codes[keep]
        true_text = [split.captions[i][0] for i in keep]
        true_idx = torch.tensor([index[t] for t in true_text])
        excl = [excluded[t] for t in true_text]
        negatives = sample_negatives(excl, len(pool), candidates - 1, seed)
        rp = r_precision(codes, pool_emb[true_idx], pool_emb, negatives)
        img_n = torch.nn.functional.normalize(codes, dim=-1)
        txt_n = torch.nn.functional.normalize(pool_emb, dim=-1)
        best_text = (img_n @ txt_n.t()).argmax(1).tolist()
        i2t = sum(b in e for b, e in zip(best_text, excl)) / len(keep)
        best_image = (txt_n[true_idx] @ img_n.t()).argmax(1).tolist()
        t2i = sum(t in split.captions[keep[b]] for b, t in zip(best_image, true_text)) / len(keep)
    finally:
        text.train(was_training[0])
        image.train(was_training[1])
    return {"damsm_r_precision": rp, "r_precision_candidates": int(negatives.shape[1]) + 1,
            "image_to_text_r1": 100.0 * i2t, "text_to_image_r1": 100.0 * t2i, "images": len(keep),
            "caption_pool": len(pool)}
