"""CLIP loading in one place: random tiny models, local weight files, clear errors offline."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ratlip_cli.errors import RatlipError
from ratlip_cli.weights import clip_source, load_clip


def _outputs(model, tokenizer):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 32, 32)
    tokens = tokenizer(["a red circle", "a blue square"])
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def test_random_tiny_model_is_frozen_and_sized():
    model, tokenizer = load_clip("ratlip-tiny", "random")
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training
    img, txt = _outputs(model, tokenizer)
    assert img.shape == (2, 32) and txt.shape == (2, 32)
    assert tokenizer(["x"]).shape == (1, 16)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_file_round_trip(tmp_path, suffix):
    torch.manual_seed(123)
    saved, tokenizer = load_clip("ratlip-tiny", "random")
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in saved.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(999)  # a different random init, overwritten by the file
    loaded, _ = load_clip("ratlip-tiny", str(path))
    a_img, a_txt = _outputs(saved, tokenizer)
    b_img, b_txt = _outputs(loaded, tokenizer)
    assert torch.equal(a_img, b_img) and torch.equal(a_txt, b_txt)
    other, _ = load_clip("ratlip-tiny", "random")
    assert not torch.equal(_outputs(other, tokenizer)[0], a_img)


def test_missing_file_and_bad_tag_errors(tmp_path, monkeypatch):
    with pytest.raises(RatlipError, match="not found"):
        load_clip("ratlip-tiny", str(tmp_path / "missing.safetensors"))
    with pytest.raises(RatlipError, match="unknown CLIP weights 'nonsense'.*openai"):
        load_clip("ViT-B-32-quickgelu", "nonsense")
    with pytest.raises(RatlipError, match="unknown CLIP architecture"):
        load_clip("ViT-Q-99", "random")


def test_offline_tag_error_says_how_to_use_a_local_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(RatlipError) as err:
        load_clip("ViT-B-32-quickgelu", "openai", cache_dir=str(tmp_path / "cache"))
    assert "clip.weights=/path/to" in str(err.value)
    where, ok = clip_source("ViT-B-32-quickgelu", "openai", str(tmp_path / "cache"))
    assert not ok and "openai" in where


def test_mismatched_file_is_a_clear_error(tmp_path):
    model, _ = load_clip("ratlip-tiny", "random")
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(RatlipError, match="cannot load CLIP weights"):
        load_clip("ratlip-shapes", str(path))


def test_random_weights_give_our_one_line_notice_not_open_clips_warning(monkeypatch, capsys, caplog):
    import logging

    from ratlip_cli import weights

    monkeypatch.setattr(weights, "_RANDOM_NOTICED", set())
    with caplog.at_level(logging.WARNING):
        load_clip("ratlip-tiny", "random")
        load_clip("ratlip-tiny", "random")
    assert not [r for r in caplog.records if "No pretrained weights" in r.getMessage()]
    err = capsys.readouterr().err
    assert err.count("notice: CLIP ratlip-tiny has random weights") == 1 and len(err.strip().splitlines()) == 1
    # the filter is gone afterwards: other warnings of the root logger still get through
    with caplog.at_level(logging.WARNING):
        logging.warning("No pretrained weights loaded, said someone else")
    assert any("someone else" in r.getMessage() for r in caplog.records)
