"""AttnGAN's DAMSM encoders: the BiLSTM text encoder (RNN_ENCODER) and the image encoder (CNN_ENCODER).

Layer for layer as AttnGAN / DM-GAN ``code/model.py`` (attribute names kept, so released state
dicts map one to one). The image encoder is split into a *trunk* that yields a local feature map
and a pooled vector, and AttnGAN's two trainable projections (``emb_features``: 1x1 conv to the
embedding size, ``emb_cnn_code``: linear). Trunks:

- `InceptionTrunk`: AttnGAN's frozen Inception-v3 (Mixed_6e 17x17x768 local, 2048-d pooled) on
  the offline Inception of `ratlip_cli.metrics.inception` (the TF ImageNet weights, not the
  torchvision weights AttnGAN used); the model code receives the loaded network, it reads no file.
- `SmallCNNTrunk`: a small CNN trained jointly with the text encoder, for CPU-sized datasets
  (shapes). It is not Inception; untrained it is the random stand-in the tests use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class TextEncoder(nn.Module):
    """AttnGAN's RNN_ENCODER: embedding (ninput) -> dropout -> BiLSTM; word features and sentence vector.

    ``nhidden`` is the output width (each direction gets half). Returns ``words (B, nhidden, T)``
    with T the longest caption of the batch (padding positions are zeros) and ``sentence
    (B, nhidden)``: the last hidden states of both directions.
    """

    def __init__(self, ntoken: int, ninput: int = 300, drop_prob: float = 0.5, nhidden: int = 256,
                 nlayers: int = 1, bidirectional: bool = True) -> None:
        super().__init__()
        self.ntoken, self.ninput, self.drop_prob, self.nlayers = ntoken, ninput, drop_prob, nlayers
        self.num_directions = 2 if bidirectional else 1
        self.nhidden = nhidden // self.num_directions
        self.encoder = nn.Embedding(ntoken, ninput)
        self.drop = nn.Dropout(drop_prob)
        # The reference passes dropout=drop_prob to a 1-layer LSTM, where torch ignores it (with a warning).
        self.rnn = nn.LSTM(ninput, self.nhidden, nlayers, batch_first=True,
                           dropout=drop_prob if nlayers > 1 else 0.0, bidirectional=bidirectional)
        self.encoder.weight.data.uniform_(-0.1, 0.1)

    def forward(self, captions: torch.Tensor, cap_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.drop(self.encoder(captions))
        packed = pack_padded_sequence(emb, cap_lens.cpu(), batch_first=True, enforce_sorted=False)
        output, (h, _c) = self.rnn(packed)
        output = pad_packed_sequence(output, batch_first=True)[0]
        words = output.transpose(1, 2)
        sentence = h.transpose(0, 1).contiguous().view(-1, self.nhidden * self.num_directions)
        return words, sentence


class InceptionTrunk(nn.Module):
    """AttnGAN's frozen Inception-v3 trunk: Mixed_6e (768 x 17 x 17) local features and the 2048-d pool.

    ``encoder`` is the offline Inception (`ratlip_cli.metrics.inception.InceptionEncoder`: the TF
    ImageNet weights, not the torchvision weights AttnGAN used). Images in [-1, 1] are resized to
    299 x 299 (bilinear, align_corners=True, as AttnGAN) and mapped to [0, 255] pixels.
    """

    local_dim, global_dim = 768, 2048

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> InceptionTrunk:
        """The frozen network stays in eval mode (AttnGAN's ``cnn_model.train()`` also switches it)."""
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from ratlip_cli.metrics.inception import LOCAL_LAYER, POOL_LAYER

        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=True)
        out = self.encoder.features((x + 1.0) * 127.5, (LOCAL_LAYER, POOL_LAYER))
        return out[LOCAL_LAYER], out[POOL_LAYER].flatten(1)


class SmallCNNTrunk(nn.Module):
    """A small trainable CNN with DAMSM's two outputs, for CPU-sized datasets (not Inception).

    Local map: three convolutions (stride 1, 2, 2) -> ``width * 4`` channels at 1/4 of the input
    size; pooled vector: one more stride-2 convolution to ``width * 8`` channels, averaged.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.local_dim, self.global_dim = width * 4, width * 8
        act = lambda: nn.LeakyReLU(0.2, inplace=True)  # noqa: E731
        self.local = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1), act(),
            nn.Conv2d(width, width * 2, 4, 2, 1), nn.BatchNorm2d(width * 2), act(),
            nn.Conv2d(width * 2, width * 4, 4, 2, 1), nn.BatchNorm2d(width * 4), act(),
        )
        self.pooled = nn.Sequential(nn.Conv2d(width * 4, width * 8, 4, 2, 1), nn.BatchNorm2d(width * 8), act())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        local = self.local(x)
        return local, self.pooled(local).mean(dim=(2, 3))


class ImageEncoder(nn.Module):
    """AttnGAN's CNN_ENCODER: a trunk plus ``emb_features`` (1x1 conv, no bias) and ``emb_cnn_code`` (linear).

    Returns ``(features (B, nef, h, w), code (B, nef))``: region features and the global image code.
    """

    def __init__(self, trunk: nn.Module, nef: int = 256) -> None:
        super().__init__()
        self.nef = nef
        self.trunk = trunk
        self.emb_features = nn.Conv2d(trunk.local_dim, nef, kernel_size=1, stride=1, padding=0, bias=False)
        self.emb_cnn_code = nn.Linear(trunk.global_dim, nef)
        self.emb_features.weight.data.uniform_(-0.1, 0.1)
        self.emb_cnn_code.weight.data.uniform_(-0.1, 0.1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        local, pooled = self.trunk(x)
        return self.emb_features(local), self.emb_cnn_code(pooled)
