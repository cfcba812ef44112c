"""The frozen open_clip model behind the generator's CLIP mapper, the text encoder and the discriminator.

Every size is read from the loaded model (any open_clip ViT works: the tiny test model as well as
ViT-B/32): ``embed_dim``, ``width``, ``depth``, ``grid``, ``image_size``, ``context_length``.

The backbone is frozen (``requires_grad`` off) and always in eval mode, even when a parent module
is put in train mode. Gradients still flow *through* it to its inputs (the generator's images and
the mapper's token grid), which GALIP/RATLIP training needs.

The map from generator images to CLIP input is done once, here (the authors' code mapped the range
twice and resized with nearest neighbour): [-1, 1] -> [0, 1] -> resize to the CLIP image size
(bicubic, antialiased; skipped when the size already matches) -> CLIP mean/std normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ratlip_cli.errors import RatlipError

# OpenAI CLIP normalisation, used when the model carries no preprocess config of its own.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _square(value, what: str) -> int:
    """An int from an int or an (h, w) pair, insisting on a square."""
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise RatlipError(f"the CLIP image tower has a non-square {what} {tuple(value)}; ratlip needs a square one")
        return int(value[0])
    return int(value)


def _sdpa_compatible(block: nn.Module) -> bool:
    """Whether `_sdpa_block` computes exactly what this open_clip ViT block computes."""
    from open_clip.transformer import ResidualAttentionBlock

    attn = getattr(block, "attn", None)
    return (
        type(block) is ResidualAttentionBlock
        and not hasattr(block, "ln_1_kv")
        and type(attn) is nn.MultiheadAttention
        and attn._qkv_same_embed_dim
        and attn.in_proj_weight is not None
        and attn.bias_k is None
        and not attn.add_zero_attn
    )


def _sdpa_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An open_clip ResidualAttentionBlock on batch-first tokens, attention through SDPA.

    Same arithmetic as the block (no attention mask, eval mode). With autograd on, nn.MultiheadAttention
    transposes to (L, B, W) and its input projection becomes a batched matmul that reads the weight
    once per token position; here every projection is one matmul over all B * L tokens.
    """
    attn = block.attn
    b, n, w = x.shape
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(b, n, 3, heads, w // heads).permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, L, d)
    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, w)
    x = x + block.ls_1(F.linear(o, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class ClipBackbone(nn.Module):
    """A frozen open_clip model with the three views ratlip needs: text, image features, mapper."""

    def __init__(self, clip_model: nn.Module, input_mapping: str = "correct") -> None:
        super().__init__()
        if input_mapping not in ("correct", "authors"):
            raise RatlipError(f"clip.input_mapping must be correct or authors, got {input_mapping!r}")
        self.input_mapping = input_mapping
        visual = getattr(clip_model, "visual", None)
        needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post")
        if visual is None or not all(hasattr(visual, a) for a in needed) or not hasattr(visual.transformer, "resblocks"):
            raise RatlipError(
                "the CLIP model's image tower is not an open_clip VisionTransformer; the generator's "
                "CLIP mapper and the discriminator need a ViT (choose a ViT clip.arch, e.g. ViT-B-32-quickgelu)"
            )
        self.model = clip_model
        self.model.requires_grad_(False)
        self.model.eval()

        self.width = int(visual.transformer.width)
        self.depth = len(visual.transformer.resblocks)
        self.grid = _square(visual.grid_size, "token grid")
        self.image_size = _square(visual.image_size, "image size")
        self.patch_size = _square(visual.patch_size, "patch size")
        output_dim = getattr(visual, "output_dim", None)
        if output_dim is None:
            output_dim = visual.proj.shape[1] if getattr(visual, "proj", None) is not None else self.width
        self.embed_dim = int(output_dim)
        self.context_length = int(getattr(clip_model, "context_length", 0) or 0)
        self._batch_first = bool(getattr(visual.transformer, "batch_first", True))
        self._sdpa_blocks = [_sdpa_compatible(b) for b in visual.transformer.resblocks]

        cfg = getattr(visual, "preprocess_cfg", None) or {}
        mean = cfg.get("mean") or getattr(visual, "image_mean", None) or OPENAI_MEAN
        std = cfg.get("std") or getattr(visual, "image_std", None) or OPENAI_STD
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    # ---- frozen and always in eval mode -------------------------------------------------------
    def train(self, mode: bool = True) -> ClipBackbone:
        """Ignore `mode`: the backbone stays in eval mode (no dropout, fixed statistics) forever."""
        return super().train(False)

    def _ensure_frozen(self) -> None:
        # `parent.requires_grad_(True)` (a common GAN idiom to re-enable D) would unfreeze CLIP too,
        # because nn.Module.requires_grad_ walks parameters, not submodules: undo that here.
        for p in self.model.parameters():
            if p.requires_grad:
                self.model.requires_grad_(False)
                break

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    # ---- text ----------------------------------------------------------------------------------
    def encode_text(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sentence embeddings (B, E) (not normalised) and token features (B, L, W_text) after ln_final."""
        self._ensure_frozen()
        ln_final = getattr(self.model, "ln_final", None)
        if ln_final is None:
            ln_final = getattr(getattr(self.model, "text", None), "ln_final", None)
        captured: list[torch.Tensor] = []
        handle = None
        if ln_final is not None:
            handle = ln_final.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            sentence = self.model.encode_text(tokens, normalize=False)
        finally:
            if handle is not None:
                handle.remove()
        return sentence, (captured[-1] if captured else None)

    # ---- images --------------------------------------------------------------------------------
    def to_clip_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the CLIP image tower's input (resized once, CLIP-normalised).

        With ``input_mapping="authors"`` this is the release's ``transf_to_CLIP_input`` (two range
        maps, nearest resize), kept selectable to reproduce the authors' training.
        """
        if self.input_mapping == "authors":
            x = F.interpolate(images.float() * 0.5 + 0.5, size=(self.image_size, self.image_size))
            return (((x + 1.0) * 0.5 - self.mean) / self.std).to(self.dtype)
        x = (images.float() + 1.0) * 0.5
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        return x.to(self.dtype)

    def _block(self, i: int, t: torch.Tensor) -> torch.Tensor:
        """ViT block i on batch-first tokens (B, L, W)."""
        block = self.visual.transformer.resblocks[i]
        if self._sdpa_blocks[i] and (torch.is_grad_enabled() or not self._batch_first):
            return _sdpa_block(block, t)
        if self._batch_first:
            return block(t)
        return block(t.transpose(0, 1)).transpose(0, 1)

    def _embed_grid(self, grid_tokens: torch.Tensor) -> torch.Tensor:
        """(B, g*g, W) patch tokens -> (B, 1 + g*g, W): class token prepended, positions added, ln_pre."""
        v = self.visual
        cls = v.class_embedding.to(grid_tokens.dtype).view(1, 1, -1).expand(grid_tokens.shape[0], 1, -1)
        t = torch.cat([cls, grid_tokens], dim=1)
        t = t + v.positional_embedding.to(t.dtype)
        return v.ln_pre(t)

    def _to_grid(self, t: torch.Tensor) -> torch.Tensor:
        """(B, 1 + g*g, W) tokens -> (B, W, g, g), class token dropped."""
        b = t.shape[0]
        return t[:, 1:].transpose(1, 2).reshape(b, self.width, self.grid, self.grid)

    def _pool(self, t: torch.Tensor) -> torch.Tensor:
        """The pooled, projected image embedding (B, E) from the final tokens, as open_clip computes it."""
        v = self.visual
        if getattr(v, "attn_pool", None) is not None:
            pooled, _ = v._pool(t)
        elif getattr(v, "final_ln_after_pool", False):
            pooled, _ = v._global_pool(t)
            pooled = v.ln_post(pooled)
        else:
            pooled, _ = v._global_pool(v.ln_post(t))
        if getattr(v, "proj", None) is not None:
            pooled = pooled @ v.proj
        return pooled

    def check_blocks(self, blocks: Sequence[int], key: str) -> list[int]:
        """Validate 0-based ViT block indices against this backbone's depth."""
        blocks = [int(b) for b in blocks]
        bad = [b for b in blocks if not 0 <= b < self.depth]
        if bad:
            raise RatlipError(
                f"config key '{key}' has ViT block indices {bad} outside 0..{self.depth - 1} "
                f"(this CLIP image tower has {self.depth} blocks)"
            )
        return blocks

    def image_features(
        self, images: torch.Tensor, blocks: Sequence[int], with_pooled: bool = True
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Token grids (B, W, g, g) after each 0-based ViT block in `blocks`, and the pooled embedding.

        Gradients flow to `images`. With `with_pooled=False` the pass stops after the last requested
        block and the pooled embedding is None.
        """
        self._ensure_frozen()
        in_dtype = images.dtype if images.is_floating_point() else torch.float32
        x = self.visual.conv1(self.to_clip_input(images))
        t = self._embed_grid(x.flatten(2).transpose(1, 2))
        wanted = set(blocks)
        last = self.depth - 1 if with_pooled else max(wanted, default=-1)
        feats: dict[int, torch.Tensor] = {}
        for i in range(last + 1):
            t = self._block(i, t)
            if i in wanted:
                feats[i] = self._to_grid(t).to(in_dtype)
        pooled = self._pool(t).to(in_dtype) if with_pooled else None
        return [feats[b] for b in blocks], pooled

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled image embedding (B, E) of images in [-1, 1] (not normalised); differentiable."""
        return self.image_features(images, [], with_pooled=True)[1]

    def map_with_prompts(self, x: torch.Tensor, prompts: torch.Tensor, prompt_blocks: Sequence[int]) -> torch.Tensor:
        """GALIP's CLIP mapper: run a (B, W, g, g) token grid through all frozen ViT blocks.

        `prompts[:, k]` is appended as one extra token before block `prompt_blocks[k]` and removed
        after it. Returns the final grid tokens (class token dropped) as (B, W, g, g).
        """
        self._ensure_frozen()
        b, w, gh, gw = x.shape
        if (w, gh, gw) != (self.width, self.grid, self.grid):
            raise ValueError(f"mapper input must be (B, {self.width}, {self.grid}, {self.grid}), got {tuple(x.shape)}")
        if prompts.shape[1] != len(prompt_blocks):
            raise ValueError(f"{prompts.shape[1]} prompts for {len(prompt_blocks)} prompt blocks")
        in_dtype = x.dtype
        t = self._embed_grid(x.to(self.dtype).flatten(2).transpose(1, 2))
        prompts = prompts.to(t.dtype)
        slot = {int(blk): k for k, blk in enumerate(prompt_blocks)}
        for i in range(self.depth):
            if i in slot:
                k = slot[i]
                t = self._block(i, torch.cat([t, prompts[:, k : k + 1]], dim=1))[:, :-1]
            else:
                t = self._block(i, t)
        return self._to_grid(t).to(in_dtype)
