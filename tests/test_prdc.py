"""Precision/recall/density/coverage against the `prdc` package's numbers, and the Inception Score
against a transcription of OpenAI's inception_score.py."""

from pathlib import Path

import numpy as np
import pytest

from ratlip_cli.errors import RatlipError
from ratlip_cli.metrics.inception_score import inception_score, logits_weight
from ratlip_cli.metrics.prdc import knn_radii, prdc

FIXTURE = Path(__file__).parent / "fixtures" / "prdc_reference.npz"  # tools/make_prdc_fixture.py


@pytest.mark.parametrize("case", ["same", "shifted", "narrow"])
@pytest.mark.parametrize("k", [3, 5])
def test_prdc_matches_the_prdc_package(case, k):
    ref = np.load(FIXTURE)
    real, fake = ref[f"{case}_real"], ref[f"{case}_fake"]
    for chunk in (7, 1024):  # chunking never changes the numbers
        got = prdc(real, fake, pr_k=k, dc_k=k, chunk=chunk)
        for key in ("precision", "recall", "density", "coverage"):
            assert got[key] == pytest.approx(float(ref[f"{case}_k{k}_{key}"]), abs=1e-12), (case, k, key, chunk)


def test_prdc_default_ks_are_3_for_precision_recall_and_5_for_density_coverage():
    ref = np.load(FIXTURE)
    got = prdc(ref["shifted_real"], ref["shifted_fake"])
    assert got["precision"] == pytest.approx(float(ref["shifted_k3_precision"]))
    assert got["recall"] == pytest.approx(float(ref["shifted_k3_recall"]))
    assert got["density"] == pytest.approx(float(ref["shifted_k5_density"]))
    assert got["coverage"] == pytest.approx(float(ref["shifted_k5_coverage"]))


def test_knn_radius_skips_the_sample_itself():
    pts = np.array([[0.0], [1.0], [3.0], [7.0]])
    assert knn_radii(pts, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(pts, 2).tolist() == [3.0, 2.0, 3.0, 6.0]
    with pytest.raises(RatlipError, match="k < number of samples"):
        knn_radii(pts, 4)


def _openai_inception_score(preds, splits=10):
    """Transcription of openai/improved-gan inception_score.py's scoring loop (preds: softmax rows)."""
    scores = []
    for i in range(splits):
        part = preds[(i * preds.shape[0] // splits):((i + 1) * preds.shape[0] // splits), :]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        kl = np.mean(np.sum(kl, 1))
        scores.append(np.exp(kl))
    return np.mean(scores), np.std(scores)


def test_inception_score_matches_openai_scoring():
    rng = np.random.default_rng(0)
    feats = np.abs(rng.normal(size=(53, 2048)))  # 53: the splits are unequal, as in the original
    weight = rng.normal(scale=0.02, size=(1008, 2048))
    logits = feats @ weight.T
    preds = np.exp(logits - logits.max(1, keepdims=True))
    preds /= preds.sum(1, keepdims=True)
    want = _openai_inception_score(preds)
    got = inception_score(feats, weight)
    assert got == pytest.approx(want, rel=1e-10)
    assert got[0] > 1.0
    with pytest.raises(RatlipError, match="at least 10 images"):
        inception_score(feats[:9], weight)


def test_logits_weight_finds_the_1008_way_layer_or_none():
    import torch

    with_head = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Linear(2048, 1008))
    w = logits_weight(with_head)
    assert w.shape == (1008, 2048) and np.array_equal(w, with_head[1].weight.detach().double().numpy())
    assert logits_weight(torch.nn.Sequential(torch.nn.Linear(2048, 1000))) is None
