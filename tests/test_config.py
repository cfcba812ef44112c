"""Config merging: defaults < preset < --config file < --set, strict keys and types."""

from __future__ import annotations

import pytest
import yaml

from ratlip_cli.config import (
    Config,
    available_presets,
    from_dict,
    load_config,
    parse_override,
    resolve_config,
    save_config,
    to_dict,
)
from ratlip_cli.errors import RatlipError


def test_presets_shipped():
    assert {"cub", "oxford", "celeba-tiny", "coco", "shapes", "tiny"} <= set(available_presets())


def test_every_preset_resolves():
    for name in available_presets():
        cfg = resolve_config(name)
        assert cfg.preset == name


def test_each_layer_overrides_the_one_below(tmp_path):
    defaults = Config()
    preset = resolve_config("tiny")
    assert defaults.model.ngf == 64 and preset.model.ngf == 8  # preset > defaults
    assert preset.model.z_dim == 16 and preset.train.lr_g == defaults.train.lr_g  # untouched keys stay

    file = tmp_path / "extra.yaml"
    file.write_text(yaml.safe_dump({"model": {"ngf": 12, "rat": {"hidden": 4}}, "train": {"seed": 3}}))
    with_file = resolve_config("tiny", file)
    assert with_file.model.ngf == 12 and with_file.model.rat.hidden == 4 and with_file.train.seed == 3
    assert with_file.model.z_dim == 16  # the preset still applies below the file

    with_set = resolve_config("tiny", file, ["model.ngf=16", "train.seed=5"])
    assert with_set.model.ngf == 16 and with_set.train.seed == 5  # --set > file
    assert with_set.model.rat.hidden == 4


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("train.batch_size=8", "train.batch_size", 8),
        ("train.lr_g=2e-4", "train.lr_g", 2e-4),
        ("train.lr_g=1", "train.lr_g", 1.0),
        ("data.flip=false", "data.flip", False),
        ("data.flip=true", "data.flip", True),
        ("model.prompt_blocks=[0, 2]", "model.prompt_blocks", [0, 2]),
        ("train.betas=[0.5, 0.99]", "train.betas", [0.5, 0.99]),
        ("clip.weights=/tmp/x.safetensors", "clip.weights", "/tmp/x.safetensors"),
    ],
)
def test_set_parses_types(text, key, value):
    cfg = resolve_config("tiny", overrides=[text])
    section, _, name = key.rpartition(".")
    node = cfg
    for part in section.split("."):
        node = getattr(node, part)
    got = getattr(node, name)
    assert got == value and type(got) is type(value)


def test_parse_override_requires_equals():
    with pytest.raises(RatlipError, match="key=value"):
        parse_override("train.batch_size")
    assert parse_override("a.b=[1,2]") == ("a.b", [1, 2])


def test_unknown_key_names_key_and_choices():
    with pytest.raises(RatlipError) as err:
        resolve_config("tiny", overrides=["train.batchsize=8"])
    msg = str(err.value)
    assert "train.batchsize" in msg and "train.batch_size" in msg and "\n" not in msg


def test_unknown_section_and_preset():
    with pytest.raises(RatlipError, match="valid keys here: preset, clip, model"):
        resolve_config(overrides=["modle.ngf=3"])
    with pytest.raises(RatlipError, match="unknown preset 'nope'.*cub"):
        resolve_config("nope")


def test_wrong_types_and_choices():
    with pytest.raises(RatlipError, match="expects an integer"):
        resolve_config(overrides=["train.batch_size=abc"])
    with pytest.raises(RatlipError, match="expects true or false"):
        resolve_config(overrides=["data.flip=3"])
    with pytest.raises(RatlipError, match="must be one of recurrent, authors"):
        resolve_config(overrides=["model.rat.mode=lstm"])
    with pytest.raises(RatlipError, match="must be >= 0"):
        resolve_config(overrides=["model.rat.hidden=-1"])


def test_unknown_key_in_config_file(tmp_path):
    file = tmp_path / "bad.yaml"
    file.write_text("train:\n  lr: 0.1\n")
    with pytest.raises(RatlipError, match="train.lr"):
        resolve_config(None, file)
    file.write_text("train: [1, 2\n")
    with pytest.raises(RatlipError, match="not valid YAML"):
        resolve_config(None, file)


def test_round_trip(tmp_path):
    cfg = resolve_config("shapes", overrides=["model.rat.hidden=16"])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    assert from_dict(to_dict(cfg)) == cfg
