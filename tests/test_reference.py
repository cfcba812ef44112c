"""ratlip's networks equal the authors' code: outputs of GALIP's and RATLIP's own NetG, NetD and NetC.

The fixtures in tests/fixtures/reference were written by tools/make_reference_fixtures.py from
tobran/GALIP `code/models/GALIP.py` and OxygenLu/RATLIP `code/models/RATLIP.py` (their sha256 are in
meta.json): random weights in the release's checkpoint layout, fixed inputs, and the reference
networks' eval-mode fp32 outputs. Here the weights go through the importer (`ratlip_cli.models.ratlip.release`)
into ratlip's networks, run in float64 on the same inputs, which must give the same outputs up to
the rounding of one fp32 computation of that depth (tests/tolerance.py). That makes the result
independent of this machine's fp32 kernels; the fixtures were made on an Intel Xeon.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ratlip_cli.config import resolve_config
from ratlip_cli.errors import RatlipError
from ratlip_cli.models.ratlip.build import build_models
from ratlip_cli.models.ratlip.params import param_counts
from ratlip_cli.models.ratlip.release import load_release, read_release_checkpoint
from ratlip_cli.weights import load_clip
from tolerance import fp32_close

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
META = json.loads((FIXTURES / "meta.json").read_text())
IO = load_file(str(FIXTURES / "io.safetensors"))
IO64 = {k: v.double() for k, v in IO.items()}
# Rounding depth (tests/tolerance.py) of the longest path through each network. Generator: fc_code, 4 bridge
# blocks (2 convs + 2 affine modulations each), the 12-block CLIP mapper (6 products per block:
# qkv, QK^T, AV, out, 2 MLP), conv_fuse, conv_out, 3 G blocks (2 convs + 2 modulations each), to_rgb.
G_DEPTH = 1 + 4 * 4 + 12 * 6 + 2 + 3 * 4 + 1
# NetD: 3 blocks of 2 convs on the stored CLIP features; NetC: 2 more convs.
D_DEPTH, C_DEPTH = 6, 8


def _widest(*modules: torch.nn.Module) -> int:
    """The longest dot product (C_in * kh * kw of a conv, in_features of a linear) in `modules`."""
    sizes = [m.in_channels * m.kernel_size[0] * m.kernel_size[1] if isinstance(m, torch.nn.Conv2d) else m.in_features
             for mod in modules for m in mod.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    return max(sizes)


def _cfg(family: str, *extra: str):
    overrides = [f"{k}={json.dumps(v)}" for k, v in META["config"].items()]
    overrides += [f"model.ngf={META['ngf'][family]}", f"model.family={family}", "clip.arch=" + META["clip_arch"]]
    overrides += ["clip.weights=random"]
    if family == "galip":
        overrides.append("model.rat.hidden=0")
    else:
        overrides += ["model.rat.mode=authors", f"model.rat.hidden={META['ratlip_hidden']}"]
    return resolve_config(None, overrides=overrides + list(extra))


def _ref_clip():
    """The fixtures' tiny CLIP: the reference run's image tower (stored), a random text tower (unused)."""
    torch.manual_seed(0)
    model, _ = load_clip(META["clip_arch"], "random")
    visual = {k[len("visual."):]: v for k, v in load_file(str(FIXTURES / "clip_visual.safetensors")).items()}
    model.visual.load_state_dict(visual, strict=True)
    return model


@pytest.fixture(scope="module")
def ref_clip():
    return _ref_clip()


def _imported(family: str, clip):
    cfg = _cfg(family)
    torch.manual_seed(0)
    models = build_models(cfg, clip)
    release = read_release_checkpoint(FIXTURES / f"{family}_state_dict.pth")
    assert (release.family, release.rat_hidden) == (family, META["ratlip_hidden"] if family == "ratlip" else 0)
    load_release(models, release)
    for m in models.modules().values():
        m.eval()
    return models


def _imported64(family: str):
    """The imported networks in float64, around their own float64 copy of the fixtures' CLIP (the
    module's `ref_clip` stays float32 for the other tests)."""
    models = _imported(family, _ref_clip())
    for m in models.modules().values():
        m.double()
    return models


@pytest.mark.parametrize("family", ["galip", "ratlip"])
def test_generator_equals_reference(family):
    models = _imported64(family)
    expected = IO[f"{family}_g"]
    with torch.no_grad():
        out = models.generator(IO64["z"], IO64["s"])
    assert out.dtype == torch.float64
    assert out.shape == expected.shape == (META["batch"], 3, 32, 32)
    assert expected.abs().max() > 0.1  # the reference output is not trivially small
    fp32_close(out, expected, G_DEPTH, _widest(models.generator))


@pytest.mark.parametrize("family", ["galip", "ratlip"])
def test_discriminator_and_head_equal_reference(family):
    models = _imported64(family)
    with torch.no_grad():
        dmap = models.discriminator(IO64["d_features"])
        logits = models.head(dmap, IO64["s"])
    assert dmap.shape == IO[f"{family}_d"].shape
    fp32_close(dmap, IO[f"{family}_d"], D_DEPTH, _widest(models.discriminator))
    fp32_close(logits, IO[f"{family}_c"].view(-1), C_DEPTH, _widest(models.discriminator, models.head))
    assert IO[f"{family}_c"].abs().max() > 1e-3


def test_authors_mode_shares_gamma_beta_across_the_batch(ref_clip):
    """The release's Affine_rnn: every sample gets the same RAT gamma/beta (final LSTM state)."""
    models = _imported("ratlip", ref_clip)
    with torch.no_grad():
        _, trace = models.generator.trace_affines(IO["z"], IO["s"])
        _, trace_rev = models.generator.trace_affines(IO["z"].flip(0), IO["s"].flip(0))
    rat = [r for r in trace if r.recurrent]
    assert len(rat) == 16 and all(r.gamma.shape[0] == 1 for r in rat)
    # The shared state is read from the batch in order: reversing the batch changes it.
    rat_rev = [r for r in trace_rev if r.recurrent]
    assert (rat[0].gamma - rat_rev[0].gamma).abs().max() > 1e-4
    plain = [r for r in trace if not r.recurrent]
    assert plain and all(r.gamma.shape[0] == META["batch"] for r in plain)


def test_importer_rejects_wrong_files_and_shapes(ref_clip, tmp_path):
    bogus = tmp_path / "x.pth"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(RatlipError, match="not a readable torch checkpoint"):
        read_release_checkpoint(bogus)
    torch.save({"generator": {}}, tmp_path / "y.pth")
    with pytest.raises(RatlipError, match="netG, netD and netC"):
        read_release_checkpoint(tmp_path / "y.pth")
    release = read_release_checkpoint(FIXTURES / "galip_state_dict.pth")
    torch.manual_seed(0)
    wrong = build_models(_cfg("galip", "model.ngf=16"), ref_clip)
    with pytest.raises(RatlipError, match="does not fit this config.*shape"):
        load_release(wrong, release)
    other = build_models(_cfg("ratlip"), ref_clip)
    with pytest.raises(RatlipError, match="model.family=galip"):
        load_release(other, release)
    recurrent = build_models(_cfg("ratlip", "model.rat.mode=recurrent"), ref_clip)
    with pytest.raises(RatlipError, match="model.rat.mode=authors"):
        load_release(recurrent, read_release_checkpoint(FIXTURES / "ratlip_state_dict.pth"))


def test_release_param_counts_equal_ours_in_authors_mode():
    """Our full-size networks have the parameter counts the reference code gives (release_params.json)."""
    from ratlip_cli.models.ratlip.params import release_param_counts

    counts = release_param_counts()
    clip, _ = load_clip("ViT-B-32-quickgelu", "random")
    base = ["model.image_size=224", "clip.weights=random"]
    galip = param_counts(build_models(resolve_config("cub", overrides=base + ["model.family=galip", "model.rat.hidden=0"]), clip))
    assert galip["generator"]["trainable"] == counts["galip"]["netG"] == 51_830_211
    assert galip["discriminator"]["trainable"] == counts["galip"]["netD_used"]
    assert galip["head"]["trainable"] == counts["galip"]["netC"]
    for h, row in counts["ratlip"].items():
        cfg = resolve_config("cub", overrides=base + ["model.rat.mode=authors", f"model.rat.hidden={h}"])
        assert param_counts(build_models(cfg, clip))["generator"]["trainable"] == row["netG"], h
    assert counts["ratlip"]["64"]["netG"] == 53_771_379


def test_import_command_makes_a_run_that_samples(tmp_path):
    """`ratlip import` on a GALIP-format file: a run folder that `ratlip sample` draws from, whose
    generator gives the reference output, and whose checkpoint holds the imported weights."""
    from typer.testing import CliRunner

    from ratlip_cli.cli import app
    from ratlip_cli.export import load_generator, save_clip_weights
    from ratlip_cli.train.checkpoint import latest_checkpoint

    runner = CliRunner()
    sets = [f"{k}={json.dumps(v)}" for k, v in META["config"].items()]
    # The fixtures' CLIP image tower, saved as a whole open_clip model file for clip.weights.
    clip_file = tmp_path / "clip.safetensors"
    save_clip_weights(_ref_clip(), clip_file)
    sets += [f"model.ngf={META['ngf']['galip']}", f"clip.arch={META['clip_arch']}",
             f"clip.weights={clip_file}", f"train.runs_dir={tmp_path / 'runs'}"]
    args = ["import", str(FIXTURES / "galip_state_dict.pth"), "--preset", "tiny", "--name", "galip"]
    for text in sets:
        args += ["--set", text]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "galip"
    for which in ("ema", "raw"):
        loaded = load_generator(run, "cpu", which)
        assert loaded.cfg.model.family == "galip"
        with torch.no_grad():  # in float64, as test_generator_equals_reference
            net = loaded.generator.double()
            fp32_close(net(IO64["z"], IO64["s"]), IO["galip_g"], G_DEPTH, _widest(net))
    _, state = latest_checkpoint(run / "checkpoints")
    assert state["step"] == 0 and "blocks.0.c1.conv.weight" in state["generator"]
    result = runner.invoke(app, ["sample", "a bird", "--run", str(run), "--n", "2", "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g.png").stat().st_size > 0
    again = runner.invoke(app, args)  # the run exists now: refused, one line
    assert again.exit_code == 2 and "already holds a run" in again.output
    bad = tmp_path / "bad.pth"
    bad.write_text("hello")
    result = runner.invoke(app, ["import", str(bad), "--preset", "tiny"])
    assert result.exit_code == 2 and "not a readable torch checkpoint" in result.output
    wrong = runner.invoke(app, [*args[:4], "--name", "x", *[a for t in sets for a in ("--set", t)], "--set", "model.ngf=16"])
    assert wrong.exit_code == 2 and "does not fit this config" in wrong.output


def test_training_continues_from_an_imported_release(tmp_path, data_root):
    """`ratlip train --resume` on an imported run: starts at step 0 from the released weights and trains."""
    from typer.testing import CliRunner

    from ratlip_cli.cli import app
    from ratlip_cli.export import save_clip_weights
    from ratlip_cli.train.checkpoint import latest_checkpoint

    data = data_root
    clip_file = tmp_path / "clip.safetensors"
    save_clip_weights(_ref_clip(), clip_file)
    sets = [f"{k}={json.dumps(v)}" for k, v in META["config"].items()]
    sets += [f"model.ngf={META['ngf']['ratlip']}", f"clip.arch={META['clip_arch']}", f"clip.weights={clip_file}",
             f"train.runs_dir={tmp_path / 'runs'}", f"data.root={data}", "train.max_steps=2", "train.sample_every=0",
             "train.batch_size=2"]
    args = ["import", str(FIXTURES / "ratlip_state_dict.pth"), "--preset", "tiny", "--name", "r"]
    result = CliRunner().invoke(app, [*args, *[a for t in sets for a in ("--set", t)]])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "r"
    _, start = latest_checkpoint(run / "checkpoints")
    result = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    _, end = latest_checkpoint(run / "checkpoints")
    assert end["step"] == 2 and end["config"]["model"]["rat"]["mode"] == "authors"
    moved = [k for k in start["generator"] if not torch.equal(start["generator"][k], end["generator"][k])]
    assert moved  # the imported weights were trained further
