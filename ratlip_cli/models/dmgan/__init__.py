"""The DM-GAN model family (Zhu et al., CVPR 2019) and AttnGAN's DAMSM encoders, as plain modules.

    vocab = Vocabulary.build(train_captions, words_num=18)
    text = TextEncoder(len(vocab), nhidden=256); image = ImageEncoder(SmallCNNTrunk(), nef=256)
    words, sentence = text(tokens, caption_lengths(tokens))
    images, maps, mu, logvar = DmganGenerator(...)(z, sentence, words, tokens[:, :words.shape[2]] == 0)

The family object the registry uses is ``FAMILY`` (`family.py`); `ratlip pretrain-text` is
`pretrain.py`; the saved encoders are `files.py`.
"""

from ratlip_cli.models.dmgan.damsm import ImageEncoder, InceptionTrunk, SmallCNNTrunk, TextEncoder
from ratlip_cli.models.dmgan.damsm_losses import (
    DamsmLoss,
    damsm_loss,
    func_attention,
    same_caption_mask,
    sent_loss,
    word_similarities,
    words_loss,
)
from ratlip_cli.models.dmgan.losses import DLoss, discriminator_loss, generator_adv_loss, kl_loss
from ratlip_cli.models.dmgan.networks import (
    CANet,
    DGetLogits,
    DmganDiscriminator,
    DmganGenerator,
    GetImageG,
    InitStageG,
    NextStageG,
    init_weights,
    memory_attention,
)
from ratlip_cli.models.dmgan.sizes import stage_sizes
from ratlip_cli.models.dmgan.vocab import Vocabulary, caption_lengths
from ratlip_cli.models.dmgan.family import FAMILY  # noqa: E402  (after the networks it wraps)

__all__ = [
    "FAMILY", "CANet", "DGetLogits", "DLoss", "DamsmLoss", "DmganDiscriminator", "DmganGenerator", "GetImageG",
    "ImageEncoder", "InceptionTrunk", "InitStageG", "NextStageG", "SmallCNNTrunk", "TextEncoder", "Vocabulary",
    "caption_lengths", "damsm_loss", "discriminator_loss", "func_attention", "generator_adv_loss", "init_weights",
    "kl_loss", "memory_attention", "same_caption_mask", "sent_loss", "stage_sizes", "word_similarities",
    "words_loss",
]
