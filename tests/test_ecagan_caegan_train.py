"""`ratlip train` with model.family=ecagan and caegan on the tiny preset (CPU): bit-exact resume, the
families' extra loss columns, each switch, and text-only sampling and evaluation from the export.

The DAMSM encoders are the small CNN trunk pretrained for 2 steps; no number from these runs means
anything beyond the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from ratlip_cli.cli import app
from ratlip_cli.config import resolve_config
from ratlip_cli.errors import RatlipError
from ratlip_cli.export import load_generator
from ratlip_cli.models.caegan.networks import CaeganGenerator
from ratlip_cli.models.dmgan.family import build_dmgan
from ratlip_cli.models.common.carafe import CARAFE
from ratlip_cli.models.common.channel_attention import SqueezeExcite
from ratlip_cli.models.ecagan.networks import EcaganGenerator
from ratlip_cli.train import train
from ratlip_cli.train.checkpoint import latest_checkpoint
from ratlip_cli.models.registry import get_family
from ratlip_cli.train.run import TIMING_COLUMNS, read_metrics
from state_compare import assert_same

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(tmp_path: Path, data_root: Path, *sets: str):
    return resolve_config("tiny", overrides=[f"train.runs_dir={tmp_path / 'runs'}", f"data.root={data_root}", *sets])


def _gan(tmp_path, data_root, encoders_dir, family, name, *sets):
    return tiny(tmp_path, data_root, f"model.family={family}", f"dmgan.text_encoder={encoders_dir}",
                f"train.name={name}", *sets)


def _rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in read_metrics(run_dir / "metrics.csv")]


@pytest.mark.parametrize("family,column", [("ecagan", "g_per"), ("caegan", "g_prior")])
def test_train_four_steps_and_resume_bit_exact(tmp_path, data_root, encoders_dir, family, column):
    from ratlip_cli.train.loop import resume_config

    full = train(_gan(tmp_path, data_root, encoders_dir, family, "full", "train.max_steps=4"))
    part = train(_gan(tmp_path, data_root, encoders_dir, family, "part", "train.max_steps=2"))
    resumed = train(resume_config(part.run_dir, overrides=["train.max_steps=4"]), resume=part.run_dir)
    assert full.step == resumed.step == 4
    _, a = latest_checkpoint(full.run_dir / "checkpoints")
    _, b = latest_checkpoint(part.run_dir / "checkpoints")
    assert a["config"]["model"]["family"] == family
    for key in ("generator", "discriminator", "ema", "opt_g", "opt_d", "rng", "noise_rng"):
        assert_same(a[key], b[key], key)
    assert _rows(full.run_dir) == _rows(part.run_dir)
    first = _rows(full.run_dir)[0]
    assert float(first[column]) > 0  # the family's own term is on and logged
    g_parts = float(first["g_damsm"]) + float(first["g_kl"]) + float(first[column])
    assert float(first["g_loss"]) > g_parts  # plus the adversarial terms
    doc = json.loads((full.run_dir / "export" / "generator.json").read_text())
    assert doc["family"] == family


def test_resuming_with_another_family_is_refused(tmp_path, data_root, encoders_dir):
    from ratlip_cli.train.loop import resume_config

    part = train(_gan(tmp_path, data_root, encoders_dir, "ecagan", "run", "train.max_steps=1"))
    with pytest.raises(RatlipError, match="with other model.family"):
        train(resume_config(part.run_dir, overrides=["train.max_steps=2", "model.family=caegan"]), resume=part.run_dir)


@pytest.mark.parametrize("family", ["ecagan", "caegan"])
def test_sample_and_eval_from_text_alone(tmp_path, data_root, encoders_dir, family):
    result = train(_gan(tmp_path, data_root, encoders_dir, family, "run", "train.max_steps=2"))
    loaded = load_generator(result.run_dir / "export")
    assert loaded.cfg.model.family == family
    inner = loaded.generator.generator
    assert isinstance(inner, EcaganGenerator if family == "ecagan" else CaeganGenerator)
    runner = CliRunner()
    res = runner.invoke(app, ["sample", "a big red circle on a blue background", "--run", str(result.run_dir), "--n", "2",
                              "--out", str(tmp_path / "g.png"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "1 row x 2 images of 32x32" in res.output.replace("\n", " ")
    res = runner.invoke(app, ["eval", "--run", str(result.run_dir), "--num", "12", "--json", "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert row["num_images"] == 12 and 0.0 <= row["damsm_r_precision"] <= 100.0


def test_caegan_sampling_reads_the_query_prior_not_an_image(tmp_path, data_root, encoders_dir, monkeypatch):
    result = train(_gan(tmp_path, data_root, encoders_dir, "caegan", "run", "train.max_steps=2"))
    loaded = load_generator(result.run_dir / "export")
    gen = loaded.generator.generator
    calls = []
    monkeypatch.setattr(gen.query_prior, "forward", lambda s, _f=gen.query_prior.forward: calls.append(1) or _f(s))
    s = loaded.embed(["a big red circle on a blue background"] * 2)
    with torch.no_grad():
        images = loaded.generator(torch.randn(2, loaded.z_dim), s)
    assert calls and images.shape == (2, 3, 32, 32)


def _generator(tmp_path, data_root, family, *sets):
    torch.manual_seed(0)
    cfg = tiny(tmp_path, data_root, f"model.family={family}", *sets)
    return build_dmgan(cfg, 16, 6, get_family(cfg).make_generator)[0].generator


def test_each_switch_changes_the_network_it_names(tmp_path, data_root):
    base = _generator(tmp_path, data_root, "dmgan")
    keys = lambda g: {k: tuple(v.shape) for k, v in g.state_dict().items()}  # noqa: E731
    off = _generator(tmp_path, data_root, "ecagan", "ecagan.carafe=false", "ecagan.channel_attention=none")
    assert keys(off) == keys(base)
    carafe = _generator(tmp_path, data_root, "ecagan", "ecagan.channel_attention=none", "ecagan.k_up=3",
                        "ecagan.carafe_channels=6")
    blocks = [m for m in carafe.modules() if isinstance(m, CARAFE)]
    assert len(blocks) == carafe.h_net1.steps and all(b.k_up == 3 and b.compressor.out_channels == 6 for b in blocks)
    assert all(b.encoder.weight.std() < 0.01 for b in blocks)  # CARAFE's own init survives DM-GAN's
    se = _generator(tmp_path, data_root, "ecagan", "ecagan.carafe=false", "ecagan.channel_attention=se")
    assert sum(isinstance(m, SqueezeExcite) for m in se.modules()) == se.h_net1.steps
    assert {k for k in keys(se)} - set(keys(base)) and all(
        k.startswith("h_net1.upsample") for k in set(keys(se)) ^ set(keys(base)))
    ce_off = _generator(tmp_path, data_root, "caegan", "caegan.cross_attention=false")
    assert keys(ce_off) == keys(base)
    ce = _generator(tmp_path, data_root, "caegan", "caegan.prior_regions=5")
    assert ce.query_prior.position.shape == (5, 16)
    assert {k.split(".")[0] for k in set(keys(ce)) - set(keys(base))} == {"encoder", "query_prior"}


def test_ecagan_perceptual_switch_and_substitute_label(tmp_path, data_root, encoders_dir):
    off = train(_gan(tmp_path, data_root, encoders_dir, "ecagan", "noper", "train.max_steps=1", "ecagan.perceptual=false"))
    assert float(_rows(off.run_dir)[0]["g_per"]) == 0.0
    from ratlip_cli.models.ecagan.perceptual_network import build_perceptual_loss, perceptual_label

    cfg = tiny(tmp_path, data_root, "model.family=ecagan")
    assert "substitute" in perceptual_label(cfg.ecagan)
    loss = build_perceptual_loss(cfg.ecagan)
    assert [type(m).__name__ for m in loss.features][-1] != "" and len(loss.features) == 6  # conv .. conv_4
    with pytest.raises(RatlipError, match="vgg16_file"):
        tiny(tmp_path, data_root, "model.family=ecagan", "ecagan.perceptual_network=vgg16")


def test_paper_loss_formulas_train_and_change_the_logged_terms(tmp_path, data_root, encoders_dir):
    """dmgan.loss_formulas=paper: the first step's logged KL is CAE-GAN's mean-only L_CA, and the D and
    G totals use the papers' weights (same init, same batch: only the formulas differ)."""
    code = train(_gan(tmp_path, data_root, encoders_dir, "caegan", "code", "train.max_steps=1", "train.log_every=1"))
    paper = train(_gan(tmp_path, data_root, encoders_dir, "caegan", "paper", "train.max_steps=1", "train.log_every=1",
                       "dmgan.loss_formulas=paper"))
    a, b = _rows(code.run_dir)[0], _rows(paper.run_dir)[0]
    assert a["d_real"] == b["d_real"] and a["d_fake"] == b["d_fake"] and a["d_mis"] == b["d_mis"]  # same logits
    assert float(a["d_loss"]) != float(b["d_loss"])
    assert 0 < float(b["g_kl"]) != float(a["g_kl"])
    assert float(b["g_damsm"]) == pytest.approx(float(a["g_damsm"]), rel=1e-5)


def test_head_attention_adds_a_channel_attention_conv_before_each_image_head(tmp_path, data_root):
    """ecagan.head_attention: each stage's image = tanh(conv3x3(attention(conv(h)))); nothing else changes."""
    from ratlip_cli.models.common.channel_attention import ChannelAttentionBlock
    from ratlip_cli.models.ecagan.networks import AttentiveImageHead

    keys = lambda g: {k: tuple(v.shape) for k, v in g.state_dict().items()}  # noqa: E731
    plain = _generator(tmp_path, data_root, "ecagan")
    head = _generator(tmp_path, data_root, "ecagan", "ecagan.head_attention=eca")
    heads = [m for m in head.modules() if isinstance(m, AttentiveImageHead)]
    assert len(heads) == head.branch_num
    assert all(isinstance(h.attend, ChannelAttentionBlock) for h in heads)
    added = set(keys(head)) - set(keys(plain))
    assert added and all(k.split(".")[1] == "attend" for k in added)
    assert set(keys(plain)) - set(keys(head)) == set()  # img_netK.img.* keep their names
    x = torch.randn(2, heads[0].attend.conv.in_channels, 8, 8)
    want = heads[0].img(heads[0].attend.attention(F.conv2d(x, heads[0].attend.conv.weight, padding=1)))
    torch.testing.assert_close(heads[0](x), want)
