"""Metric maths with no real weights: Frechet distance, KID, the feature pipeline, CLIP score, R-precision."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from ratlip_cli.errors import RatlipError
from ratlip_cli.metrics import (
    ClipScorer,
    build_feature_extractor,
    clip_score,
    fid_from_features,
    frechet_distance,
    kernel_distance,
    psd_sqrt,
    r_precision,
    random_tiny,
    sample_negatives,
)
from ratlip_cli.metrics import features as features_mod
from ratlip_cli.metrics.clip_score import load_eval_clip
from ratlip_cli.metrics.fid import trace_sqrt_product


def _images(n: int, seed: int, size: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


# ----------------------------------------------------------------------------- Frechet distance


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    for _ in range(5):
        mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
        s1, s2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
        expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
        got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
        assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_trace_sqrt_product_matches_scipy_on_full_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(12, 12)), rng.normal(size=(12, 12))
    s1, s2 = a @ a.T, b @ b.T
    assert trace_sqrt_product(s1, s2) == pytest.approx(np.trace(scipy.linalg.sqrtm(s1 @ s2)).real, rel=1e-9)
    mu = rng.normal(size=12)
    cached = frechet_distance(mu, s1, -mu, s2, sqrt_sigma2=psd_sqrt(s2))  # reference root computed once
    assert cached == pytest.approx(frechet_distance(mu, s1, -mu, s2), rel=1e-10)


def test_singular_covariances_give_finite_non_negative_distance():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 16))  # fewer samples than dimensions: rank-deficient covariance
    value = fid_from_features(x, x + 0.01)
    assert np.isfinite(value) and value >= 0


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 8))
    y = rng.normal(size=(400, 8))
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-9)
    values = [fid_from_features(x, y + shift) for shift in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_mismatched_statistics_are_a_one_line_error():
    with pytest.raises(RatlipError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ----------------------------------------------------------------------------- KID


def _mmd_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    m = x.shape[0]
    kxx, kyy = k(x, x), k(y, y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * k(x, y).mean()
    )


def test_kid_is_the_unbiased_polynomial_mmd():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(30, 5)), rng.normal(0.5, 1.0, size=(30, 5))
    mean, std = kernel_distance(x, y, num_subsets=3, subset_size=30)  # whole sets: every subset equal
    assert mean == pytest.approx(_mmd_unbiased(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_kid_is_about_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    same, _ = kernel_distance(x, x, num_subsets=20, subset_size=100, seed=0)
    iid, _ = kernel_distance(x, y, num_subsets=20, subset_size=100, seed=0)
    shifted, _ = kernel_distance(x, y + 1.0, num_subsets=20, subset_size=100, seed=0)
    assert abs(same) < 0.05 * shifted and abs(iid) < 0.05 * shifted
    assert kernel_distance(x, y, 5, 50, seed=7) == kernel_distance(x, y, 5, 50, seed=7)


# ----------------------------------------------------------------------------- feature extractors


def test_random_tiny_uses_clean_fids_own_pipeline(tmp_path):
    from cleanfid.fid import get_folder_features

    imgs = _images(6, seed=6)
    for i, img in enumerate(imgs):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    fx = random_tiny("clean", "cpu")
    ours = fx(imgs)
    theirs = get_folder_features(
        str(tmp_path), fx.model, num_workers=0, batch_size=3, device=torch.device("cpu"), mode="clean", verbose=False
    )
    assert ours.shape == (6, 16)
    # The same network on the same pixels in the same batches of 3, on one machine: equal (0 measured).
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_random_tiny_fid_is_zero_on_equal_images_and_grows_with_brightness():
    fx = random_tiny()
    base = _images(24, seed=7)
    feats = fx(base)
    assert fid_from_features(feats, fx(base)) == pytest.approx(0.0, abs=1e-9)
    brighter = lambda d: [np.clip(i.astype(int) + d, 0, 255).astype(np.uint8) for i in base]  # noqa: E731
    shifted = [fid_from_features(feats, fx(brighter(d))) for d in (20, 60, 120)]
    assert 0 < shifted[0] < shifted[1] < shifted[2]


def _fake_inception(path):
    class Layers(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = Layers()

        def forward(self, x, return_features: bool = False):
            return self.layers(x)

    with warnings.catch_warnings():  # torch.jit.script is deprecated; clean-fid's file is TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(Net()).save(str(path))


@pytest.mark.parametrize("name", ["inception-2015-12-05.pt", "my-inception.pt"])
def test_inception_loads_from_a_local_file_offline(tmp_path, monkeypatch, name):
    monkeypatch.delenv("RATLIP_INCEPTION", raising=False)
    monkeypatch.setattr(features_mod, "_online", lambda *a, **k: pytest.fail("must not touch the network"))
    path = tmp_path / name
    _fake_inception(path)
    fx = build_feature_extractor("inception", "clean", str(path), "cpu")
    assert fx(_images(2, seed=8)).shape == (2, 2048)
    sha = features_mod.file_sha256(path)
    assert fx.key == f"inception-{sha[:12]}" and sha[:12] in fx.identity
    with pytest.raises(RatlipError, match="cannot fold the batch norms .* use --set eval.inception_graph=reference"):
        build_feature_extractor("inception", "clean", str(path), "cpu", graph="folded")


def test_inception_missing_offline_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.delenv("RATLIP_INCEPTION", raising=False)
    monkeypatch.setattr(features_mod, "inception_candidates", lambda path="": [tmp_path / "absent.pt"])
    monkeypatch.setattr(features_mod, "_online", lambda *a, **k: False)
    with pytest.raises(RatlipError) as err:
        build_feature_extractor("inception", "clean", "", "cpu")
    msg = str(err.value)
    assert "--inception FILE" in msg and "RATLIP_INCEPTION" in msg and "\n" not in msg
    with pytest.raises(RatlipError, match="Inception file not found"):
        build_feature_extractor("inception", "clean", str(tmp_path / "nope.pt"), "cpu")
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a torchscript file")
    with pytest.raises(RatlipError, match="cannot load Inception file"):
        build_feature_extractor("inception", "clean", str(bogus), "cpu")


# ----------------------------------------------------------------------------- CLIP score and R-precision


def test_clip_score_equals_a_hand_computation(tiny_clip):
    model, tokenizer = tiny_clip
    imgs = _images(5, seed=9)
    texts = ["a red circle", "a blue square", "a green triangle", "a small bird", "a yellow flower"]
    scorer = ClipScorer(model, tokenizer, "cpu", "ratlip-tiny random")
    got = clip_score(scorer.embed_images(imgs), scorer.embed_texts(texts))

    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0  # 32 px: resize/crop are no-ops
    with torch.no_grad():
        img = model.encode_image((x - mean) / std)
        txt = model.encode_text(tokenizer(texts))
    cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    assert got == pytest.approx(100 * cos.mean().item(), abs=1e-4)


def test_sample_negatives_is_seeded_distinct_and_respects_exclusions():
    excluded = [{0, 1}, {2}, set(), {5, 6, 7}]
    a = sample_negatives(excluded, pool_size=20, num_negatives=9, seed=3)
    assert a.shape == (4, 9)
    np.testing.assert_array_equal(a, sample_negatives(excluded, 20, 9, seed=3))
    for row, excl in zip(a, excluded):
        assert len(set(row)) == 9 and not set(row) & excl
    assert sample_negatives([{0}], pool_size=4, num_negatives=9).shape == (1, 3)  # fewer available


def test_r_precision_is_100_for_nearest_captions_and_chance_for_shuffled(tiny_clip):
    model, tokenizer = tiny_clip
    scorer = ClipScorer(model, tokenizer, "cpu")
    pool = [f"a photo of thing number {i} in colour {c}" for i in range(40) for c in ("red", "blue")]
    pool_emb = scorer.embed_texts(pool)
    img_emb = scorer.embed_images(_images(200, seed=10))
    nearest = (img_emb @ pool_emb.T).argmax(dim=1).numpy()
    negatives = sample_negatives([{int(i)} for i in nearest], len(pool), 9, seed=0)
    assert r_precision(img_emb, pool_emb[nearest], pool_emb, negatives) == 100.0

    shuffled = np.random.default_rng(0).integers(0, len(pool), size=200)
    negatives = sample_negatives([{int(i)} for i in shuffled], len(pool), 9, seed=0)
    chance = r_precision(img_emb, pool_emb[shuffled], pool_emb, negatives)
    assert 2.0 <= chance <= 25.0, chance  # chance level: 1 in 10


def test_eval_clip_offline_errors_name_the_eval_key(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RatlipError, match=r"--set eval.clip_weights=") as err:
        load_eval_clip("ViT-B-32", "openai")
    assert "\n" not in str(err.value)
    with pytest.raises(RatlipError, match="eval.clip_weights"):
        load_eval_clip("ratlip-tiny", str(tmp_path / "missing.safetensors"))


def test_openai_tag_gets_the_quickgelu_architecture():
    from ratlip_cli.metrics.clip_score import _matching_activation

    assert _matching_activation("ViT-B-32", "openai") == "ViT-B-32-quickgelu"
    assert _matching_activation("ViT-B-32", "laion2b_s34b_b79k") == "ViT-B-32"
    assert _matching_activation("ratlip-tiny", "random") == "ratlip-tiny"


def test_random_eval_clip_is_the_same_every_time():
    a = load_eval_clip("ratlip-tiny", "random")
    torch.manual_seed(12345)
    b = load_eval_clip("ratlip-tiny", "random")
    imgs = _images(2, seed=11)
    assert torch.equal(a.embed_images(imgs), b.embed_images(imgs))
    assert a.identity == "ratlip-tiny random(seed 0)"


def test_eval_clip_identity_is_the_weights_not_the_file(tmp_path):
    """Two files holding one CLIP (different headers) score as the same CLIP; other weights do not."""
    from safetensors.torch import save_file

    from ratlip_cli.weights import load_clip

    torch.manual_seed(3)
    model, _ = load_clip("ratlip-tiny", "random")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "a.safetensors", metadata={"note": "one copy"})
    save_file(state, tmp_path / "b.safetensors", metadata={"note": "another copy, other bytes"})
    assert (tmp_path / "a.safetensors").read_bytes() != (tmp_path / "b.safetensors").read_bytes()
    ids = [load_eval_clip("ratlip-tiny", str(tmp_path / f"{n}.safetensors")).identity for n in "ab"]
    assert ids[0] == ids[1] and "weights sha256:" in ids[0]
    state["logit_scale"] = state["logit_scale"] + 1.0
    save_file(state, tmp_path / "c.safetensors")
    assert load_eval_clip("ratlip-tiny", str(tmp_path / "c.safetensors")).identity != ids[0]
