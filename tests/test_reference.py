"""ratlip's networks equal the authors' code: outputs of GALIP's and RATLIP's own NetG, NetD and NetC.

The fixtures in tests/fixtures/reference were written by tools/make_reference_fixtures.py from
tobran/GALIP `code/models/GALIP.py` and OxygenLu/RATLIP `code/models/RATLIP.py` (their sha256 are in
meta.json): random weights in the release's checkpoint layout, fixed inputs, and the reference
networks' eval-mode fp32 outputs. Here the weights go through the importer (`ratlip_cli.models.ratlip.release`)
into ratlip's networks, which must give the same outputs (max abs diff < 1e-5).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ratlip_cli.config import resolve_config
from ratlip_cli.errors import RatlipError
from ratlip_cli.models import build_models, param_counts
from ratlip_cli.models.ratlip.release import load_release, read_release_checkpoint
from ratlip_cli.weights import load_clip

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
META = json.loads((FIXTURES / "meta.json").read_text())
IO = load_file(str(FIXTURES / "io.safetensors"))
TOL = 1e-5


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


@pytest.mark.parametrize("family", ["galip", "ratlip"])
def test_generator_equals_reference(ref_clip, family):
    models = _imported(family, ref_clip)
    expected = IO[f"{family}_g"]
    with torch.no_grad():
        out = models.generator(IO["z"], IO["s"])
    assert out.shape == expected.shape == (META["batch"], 3, 32, 32)
    assert expected.abs().max() > 0.1  # the reference output is not trivially small
    assert (out - expected).abs().max().item() < TOL


@pytest.mark.parametrize("family", ["galip", "ratlip"])
def test_discriminator_and_head_equal_reference(ref_clip, family):
    models = _imported(family, ref_clip)
    with torch.no_grad():
        dmap = models.discriminator(IO["d_features"])
        logits = models.head(dmap, IO["s"])
    assert dmap.shape == IO[f"{family}_d"].shape
    assert (dmap - IO[f"{family}_d"]).abs().max().item() < TOL
    assert (logits - IO[f"{family}_c"].view(-1)).abs().max().item() < TOL
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
    from ratlip_cli.models.params import release_param_counts

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
        with torch.no_grad():
            assert (loaded.generator(IO["z"], IO["s"]) - IO["galip_g"]).abs().max().item() < TOL
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
