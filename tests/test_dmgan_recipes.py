"""DM-GAN's own recipes per dataset, pinned to the released configuration.

Sources (MinfengZhu/DM-GAN, paths inside that repository):
- code/cfg/bird_DMGAN.yml: TRAIN.BATCH_SIZE 10, MAX_EPOCH 800, SMOOTH.LAMBDA 5.0, GAN.R_NUM 2, and no
  TEXT.WORDS_NUM (code/miscc/config.py's default: 18).
- code/cfg/coco_DMGAN.yml: TRAIN.BATCH_SIZE 16, MAX_EPOCH 200, SMOOTH.LAMBDA 50.0, GAN.R_NUM 3,
  TEXT.WORDS_NUM 12.
- Both: DISCRIMINATOR_LR = GENERATOR_LR = 0.0002, GF_DIM 64, DF_DIM 32, Z_DIM 100; one process.
"""

from __future__ import annotations

import pytest

from ratlip_cli.config import resolve_config

BIRD = {"batch_size": 10, "epochs": 800, "damsm_weight": 5.0, "r_num": 2, "words_num": 18}
COCO = {"batch_size": 16, "epochs": 200, "damsm_weight": 50.0, "r_num": 3, "words_num": 12}


def _recipe(cfg) -> dict:
    return {"batch_size": cfg.train.batch_size, "epochs": cfg.train.epochs, "damsm_weight": cfg.dmgan.damsm_weight,
            "r_num": cfg.dmgan.r_num, "words_num": cfg.damsm.words_num}


@pytest.mark.parametrize("family", ["dmgan", "ecagan", "caegan"])
@pytest.mark.parametrize("preset, expected", [("cub", BIRD), ("coco", COCO)])
def test_dataset_gets_dmgans_recipe(preset, expected, family):
    cfg = resolve_config(preset, overrides=[f"model.family={family}"])
    assert _recipe(cfg) == expected
    assert (cfg.dmgan.lr_g, cfg.dmgan.lr_d, cfg.dmgan.gf_dim, cfg.dmgan.df_dim, cfg.dmgan.z_dim) == (2e-4, 2e-4, 64, 32, 100)
    # the paper presets' release batch (8 x 64) is GALIP's; DM-GAN trains one batch per step
    assert (cfg.train.global_batch, cfg.train.accumulate) == (0, 1)


def test_coco_never_gets_the_bird_values():
    cfg = resolve_config("coco", overrides=["model.family=dmgan"])
    assert all(_recipe(cfg)[k] != v for k, v in BIRD.items() if COCO[k] != v)


def test_explicit_settings_win_over_the_recipe(capsys):
    cfg = resolve_config("coco", overrides=["model.family=dmgan", "train.batch_size=4", "dmgan.r_num=2"])
    assert (cfg.train.batch_size, cfg.dmgan.r_num) == (4, 2)
    assert (cfg.train.epochs, cfg.dmgan.damsm_weight, cfg.damsm.words_num) == (200, 50.0, 12)


def test_other_datasets_say_which_recipe_they_get(capsys):
    cfg = resolve_config("oxford", overrides=["model.family=dmgan", "train.name=recipe-note"])
    assert _recipe(cfg) == BIRD
    err = capsys.readouterr()
    assert "DM-GAN publishes recipes for CUB and COCO only; using its bird recipe" in err.out + err.err


def test_presets_with_their_own_dmgan_section_keep_it():
    for preset in ("shapes", "tiny"):
        plain = resolve_config(preset)
        cfg = resolve_config(preset, overrides=["model.family=dmgan"])
        assert (cfg.train.batch_size, cfg.train.epochs, cfg.dmgan.r_num) == (
            plain.train.batch_size, plain.train.epochs, plain.dmgan.r_num)


def test_resume_does_not_reapply_the_recipe():
    run_cfg = resolve_config("coco", overrides=["model.family=dmgan", "train.batch_size=4"])
    resumed = resolve_config(base=run_cfg, overrides=["train.max_steps=10"])
    assert resumed.train.batch_size == 4 and resumed.train.max_steps == 10


def test_pretrain_text_uses_the_recipes_caption_length():
    cfg = resolve_config("coco", recipe_of=("dmgan", "damsm."))
    assert cfg.model.family == "ratlip" and cfg.damsm.words_num == 12
    assert cfg.train.batch_size == 64  # only the damsm.* keys of the recipe
