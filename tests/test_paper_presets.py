"""Every hyperparameter of the paper presets, pinned to the authors' released configuration.

Sources (OxygenLu/RATLIP and tobran/GALIP, both MIT; paths inside their repositories):
- code/cfg/birds.yml, code/cfg/flower.yml, code/cfg/faces.yml (RATLIP) and code/cfg/coco.yml (GALIP):
  lr_g 0.0001, lr_d 0.0004, sim_w 4.0, z_dim 100, nf 64, imsize 256, max_epoch, sample_times.
- code/scripts/train.sh: batch_size=64 (per GPU; passed on the command line, which overrides the yml's
  batch_size through merge_args_yaml's `args.update(opt)` in code/lib/utils.py).
- code/src/train.py: `for epoch in range(start_epoch, args.max_epoch, 1)` with start_epoch = 1 (train.sh's
  state_epoch=1): max_epoch - 1 epochs.
- code/src/train.py: torch.optim.Adam(..., betas=(0.0, 0.9)) for G and D.
- code/lib/modules.py: MA_GP_FP32 / MA_GP_MP `2.0 * torch.mean((grad_l2norm) ** 6)`;
  `errD = errD_real + (errD_fake + errD_mis)/2.0 + errD_MAGP`; `errG = -output.mean() - args.sim_w*text_img_sim`.
- code/models/RATLIP.py: CLIP_Mapper `selected = [1,2,3,4,5,6,7,8]` (prompt blocks),
  CLIP_IMG_ENCODER `selected = [1,4,8]` (D feature blocks), NetG `code_sz, code_ch, mid_ch = 7, 64, 32`,
  4 bridge blocks (`map_num` 4), `hidden_size=64`, `fuse_feat + 0.1 * map_feat`, ShuffleAttention G=8.
- code/lib/perpare.py: Resize(int(imsize * 76 / 64)) = 304, RandomCrop(256), RandomHorizontalFlip.
"""

from __future__ import annotations

import pytest

from ratlip_cli.config import resolve_config

PAPER = ("cub", "oxford", "celeba-tiny", "coco")
EPOCHS = {"cub": 1501, "oxford": 1501, "celeba-tiny": 1501, "coco": 3004}  # range(1, max_epoch): birds/flower/faces.yml 1502, GALIP coco.yml 3005
PASSES = {"cub": 12, "oxford": 12, "celeba-tiny": 12, "coco": 1}  # sample_times


@pytest.mark.parametrize("preset", PAPER)
def test_paper_preset_hyperparameters(preset):
    cfg = resolve_config(preset)
    t, m, d = cfg.train, cfg.model, cfg.data
    assert (t.lr_g, t.lr_d) == (1e-4, 4e-4)
    assert t.betas == [0.0, 0.9]
    assert (t.ma_gp_weight, t.ma_gp_power) == (2.0, 6.0)
    assert t.clip_sim_weight == 4.0
    assert t.batch_size == 64 and t.global_batch == 512  # train.sh: 8 processes (nodes=8) x batch_size=64
    assert t.epochs == EPOCHS[preset]
    assert cfg.eval.passes == PASSES[preset] and cfg.eval.num == 0
    assert cfg.eval.generator == "raw"  # GALIP/RATLIP evaluate the trained generator (no EMA exists there)
    assert (m.family, m.z_dim, m.ngf, m.image_size) == ("ratlip", 100, 64, 224)  # imsize 256: last block 224
    assert m.prompt_blocks == [1, 2, 3, 4, 5, 6, 7, 8]
    assert m.d_feature_blocks == [1, 4, 8]
    assert (m.bridge_channels, m.bridge_mid_channels, m.bridge_blocks) == (64, 32, 4)
    assert m.mapper_scale == 0.1 and m.sa_groups == 8
    assert (m.rat.hidden, m.rat.scope) == (64, "bridge")
    assert m.d_backbone == "clip"
    assert cfg.clip.arch == "ViT-B-32-quickgelu" and cfg.clip.weights == "openai"  # OpenAI ViT-B/32
    assert (d.load_size, d.crop_size, d.flip) == (304, 256, True)
