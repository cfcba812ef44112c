"""`ratlip ablate --sweep KEY=V1,V2`: any config key as the swept axis (`--hidden` is its shorthand).

Runs are 1 step of the tiny model on a small 32 px shapes dataset, scored by the shapes checker on 16
images (numbers NOT meaningful; only the plumbing is tested).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ratlip_cli import ablate
from ratlip_cli.ablate import AblateOptions, parse_axis
from ratlip_cli.cli import app
from ratlip_cli.config import load_config
from ratlip_cli.errors import RatlipError

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    from ratlip_cli.data import generate_shapes

    root = tmp_path_factory.mktemp("sweep")
    generate_shapes(root / "data", size=32, train_per_combo=1, test_per_combo=1, novel_per_combo=1)
    return root


def args(workdir: Path, out: Path, *extra: str) -> list[str]:
    return ["ablate", "tiny", "--sweep", "train.lr_g=0.0001,0.0003", "--steps", "1", "--eval-num", "16",
            "--metrics", "shapes", "--out", str(out), "--quiet", "--set", f"data.root={workdir / 'data'}", *extra]


def test_axis_parsing_and_refusals():
    assert parse_axis(AblateOptions()).values == tuple(map(str, ablate.PAPER_HIDDENS))
    hidden = parse_axis(AblateOptions(hiddens="0,8"))
    assert hidden == parse_axis(AblateOptions(sweep="model.rat.hidden=0,8"))
    assert hidden.is_rat and hidden.values == ("0", "8")
    axis = parse_axis(AblateOptions(sweep="ecagan.carafe=true,false"))
    assert (axis.key, axis.values, axis.is_rat) == ("ecagan.carafe", ("true", "false"), False)
    bad = [
        (AblateOptions(hiddens="0", sweep="model.rat.hidden=0"), "not both"),
        (AblateOptions(sweep="ecagan.carafe"), "KEY=V1,V2"),
        (AblateOptions(sweep="train.seed=1,2"), "--seeds"),
        (AblateOptions(sweep="train.device=cpu,cuda"), "cannot change a result"),
        (AblateOptions(sweep="train.lr_g=1,1"), "twice"),
        (AblateOptions(sweep="train.lr_g="), "at least one value"),
    ]
    for opts, message in bad:
        with pytest.raises(RatlipError, match=message):
            parse_axis(opts)
    with pytest.raises(RatlipError, match="use --sweep instead"):
        ablate.sweep_config(AblateOptions(preset="tiny", steps=1, sweep="train.lr_g=1,2", sets=["train.lr_g=3"]))
    with pytest.raises(RatlipError, match="not --sweep"):
        ablate.params_only(AblateOptions(preset="tiny", sweep="train.lr_g=1,2"))


def test_hidden_shorthand_keeps_the_rat_sweep_spec_and_names():
    cfg = ablate.sweep_config(AblateOptions(preset="tiny", steps=1, hiddens="0,8"))
    assert "sweep_key" not in ablate.sweep_spec(cfg, ["shapes"])  # RAT sweeps keep their hash
    other = ablate.sweep_spec(cfg, ["shapes"], "train.lr_g")
    assert other["sweep_key"] == "train.lr_g" and "train.lr_g" not in other["config"]
    assert ablate.spec_hash(other) != ablate.spec_hash(ablate.sweep_spec(cfg, ["shapes"]))
    assert ablate.run_name(8, 0) == "h8-s0"
    assert ablate.run_name("false", 2, "ecagan.carafe") == "carafe-false-s2"
    assert ablate.run_name("a b/c", 0, "x.y") == "y-a_b_c-s0"


def test_invalid_value_is_refused_before_training(workdir, tmp_path):
    result = runner.invoke(app, ["ablate", "tiny", "--sweep", "model.family=ratlip,nope", "--steps", "1",
                                 "--out", str(tmp_path / "a"), "--set", f"data.root={workdir / 'data'}"])
    assert result.exit_code == 2 and "model.family=nope" in result.output
    assert not (tmp_path / "a" / "family-ratlip-s0").exists()


def test_sweep_of_any_key_trains_each_value_and_resumes(workdir, tmp_path):
    out = tmp_path / "lr"
    result = runner.invoke(app, args(workdir, out))
    assert result.exit_code == 0, result.output
    with open(out / "ablation.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["sweep_key"], r["value"], r["seed"], r["run"]) for r in rows] == [
        ("train.lr_g", "0.0001", "0", "lr_g-0.0001-s0"), ("train.lr_g", "0.0003", "0", "lr_g-0.0003-s0")]
    for r in rows:
        assert load_config(out / r["run"] / "config.yaml").train.lr_g == float(r["value"])
        assert r["shapes_all"] != "" and int(r["steps"]) == 1
    doc = yaml.safe_load((out / "sweep.yaml").read_text())
    assert doc["sweep_key"] == "train.lr_g" and doc["values"] == ["0.0001", "0.0003"]
    assert (out / "ablation.png").stat().st_size > 0
    assert "train.lr_g" in result.output  # the table's first column names the key
    again = runner.invoke(app, args(workdir, out))
    assert again.exit_code == 0 and "2 done, 0 to train" in again.output.replace("\n", " ")
    other = runner.invoke(app, args(workdir, out, "--set", "train.lr_d=0.001"))
    assert other.exit_code == 2 and "other settings" in other.output


def test_param_columns_of_a_family_without_bridge_or_rat():
    part = {"trainable": 5, "frozen": 1, "total": 6}
    cols = ablate._param_columns({"generator": part, "discriminator": part, "head": part, "text_encoder": part,
                                  "total": {"trainable": 15, "frozen": 4, "total": 19}})
    assert cols["bridge_params"] is None and cols["rat_params"] is None
    assert (cols["generator_trainable"], cols["generator_total"], cols["trainable_params"], cols["total_params"]) == (
        5, 6, 15, 19)


def test_a_dm_gan_cell_keeps_the_encoders_of_the_sweeps_runs_dir(tmp_path):
    """Cells train in the ablation folder; DM-GAN's default encoder folder (runs_dir/damsm-DATA) must not move."""
    from ratlip_cli.config import resolve_config

    cfg = resolve_config("tiny", overrides=[f"train.runs_dir={tmp_path / 'runs'}", "model.family=dmgan"])
    cell = ablate.cell_config(cfg, tmp_path / "abl", "5", 1, "dmgan.damsm_weight")
    assert cell.dmgan.text_encoder == str(tmp_path / "runs" / f"damsm-{cfg.data.name}")
    assert (cell.train.runs_dir, cell.train.seed, cell.dmgan.damsm_weight) == (str(tmp_path / "abl"), 1, 5.0)
    given = resolve_config("tiny", overrides=["model.family=dmgan", f"dmgan.text_encoder={tmp_path / 'enc'}"])
    assert ablate.cell_config(given, tmp_path / "abl", "5", 0, "dmgan.damsm_weight").dmgan.text_encoder == str(tmp_path / "enc")
    ratlip = ablate.cell_config(resolve_config("tiny"), tmp_path / "abl", "8", 0)
    assert ratlip.dmgan.text_encoder == "" and ratlip.model.rat.hidden == 8  # other families: nothing pinned


def test_a_family_sweep_gives_each_cell_its_familys_own_settings(tmp_path):
    from ratlip_cli.config import resolve_config

    cfg = resolve_config("tiny", overrides=[f"train.runs_dir={tmp_path / 'runs'}"])
    assert cfg.model.rat.hidden > 0
    cells = {f: ablate.cell_config(cfg, tmp_path / "abl", f, 0, "model.family") for f in ("ratlip", "galip", "dmgan")}
    assert cells["galip"].model.rat.hidden == 0  # refused otherwise: GALIP has no RAT
    assert cells["ratlip"].model.rat.hidden == cfg.model.rat.hidden
    assert cells["dmgan"].dmgan.text_encoder == str(tmp_path / "runs" / f"damsm-{cfg.data.name}")
