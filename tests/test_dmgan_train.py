"""`ratlip pretrain-text` and `ratlip train --set model.family=dmgan` on the tiny preset (CPU).

The image encoder is the small CNN trunk (damsm.image_encoder=cnn), the random-initialised
stand-in for Inception that is trained here from scratch for a few steps; no number from these
runs means anything beyond the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ratlip_cli.cli import app
from ratlip_cli.config import resolve_config
from ratlip_cli.models.dmgan.files import load_encoders
from ratlip_cli.models.dmgan.pretrain import pretrain_text
from ratlip_cli.errors import RatlipError
from ratlip_cli.models.dmgan import DmganGenerator, Vocabulary, init_weights
from ratlip_cli.models.dmgan.adapter import DmganImageGenerator, pack_condition, unpack_condition
from ratlip_cli.train import train
from ratlip_cli.train.checkpoint import latest_checkpoint
from ratlip_cli.train.run import TIMING_COLUMNS, read_metrics
from state_compare import assert_same

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(tmp_path: Path, data_root: Path, *sets: str):
    return resolve_config("tiny", overrides=[f"train.runs_dir={tmp_path / 'runs'}", f"data.root={data_root}", *sets])


def test_vocabulary_from_training_captions():
    v = Vocabulary.build(["A red circle.", "a blue circle", "red square"], words_num=4)
    assert v.words[:2] == ["<end>", "<unk>"]
    assert v.words[2:] == ["a", "circle", "red", "blue", "square"]  # by count, then alphabetically
    tokens = v(["a red zebra circle on top", ""])
    assert tokens.shape == (2, 4)
    assert tokens[0].tolist() == [v.index["a"], v.index["red"], 1, v.index["circle"]]  # cut to 4, unknown -> 1
    assert tokens[1].tolist() == [1, 0, 0, 0]  # an empty caption still has one index
    assert v.decode(tokens[0]) == "a red <unk> circle"
    assert Vocabulary.from_dict(v.to_dict()).words == v.words


def test_pretrain_text_writes_encoders_and_held_out_metrics(encoders_dir):
    enc = load_encoders(encoders_dir)
    m = enc.doc["metrics"]
    assert m["split"] == "test" and m["images"] > 0
    assert m["r_precision_candidates"] == 10  # the tiny preset's eval.r_precision_candidates
    for key in ("damsm_r_precision", "image_to_text_r1", "text_to_image_r1"):
        assert 0.0 <= m[key] <= 100.0
    assert enc.doc["step"] == 2 and enc.doc["dataset"] == "shapes"
    words, sentence, tokens = enc.encode_text(["a small red circle on a blue background"])
    assert sentence.shape == (1, 16) and words.shape[:2] == (1, 16)
    assert not any(p.requires_grad for p in enc.text.parameters())


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_pretrain_text_resume_is_bit_exact(tmp_path, data_root):
    full = tiny(tmp_path, data_root, f"damsm.out={tmp_path / 'full'}", "damsm.max_steps=4")
    pretrain_text(full)
    part = tiny(tmp_path, data_root, f"damsm.out={tmp_path / 'part'}", "damsm.max_steps=2")
    pretrain_text(part)
    again = tiny(tmp_path, data_root, f"damsm.out={tmp_path / 'part'}", "damsm.max_steps=4")
    result = pretrain_text(again)
    assert result.step == 4
    for name in ("text_encoder.safetensors", "image_encoder.safetensors"):
        a, b = _tensors(tmp_path / "full" / name), _tensors(tmp_path / "part" / name)
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name
    rows = lambda d: [{k: v for k, v in r.items() if k not in ("images_per_s", "elapsed_s")}  # noqa: E731
                      for r in read_metrics(d / "metrics.csv")]
    assert rows(tmp_path / "full") == rows(tmp_path / "part")
    assert [r["step"] for r in rows(tmp_path / "part")] == ["1", "2", "3", "4"]
    # Another architecture in the same folder is refused, not mixed in.
    other = tiny(tmp_path, data_root, f"damsm.out={tmp_path / 'part'}", "damsm.embedding_dim=8")
    with pytest.raises(RatlipError, match="embedding_dim"):
        pretrain_text(other)


def _gan(tmp_path, data_root, encoders_dir, name, *sets):
    return tiny(tmp_path, data_root, "model.family=dmgan", f"dmgan.text_encoder={encoders_dir}",
                f"train.name={name}", *sets)


def test_dmgan_train_four_steps_and_resume_bit_exact(tmp_path, data_root, encoders_dir):
    full = train(_gan(tmp_path, data_root, encoders_dir, "full", "train.max_steps=4"))
    part = train(_gan(tmp_path, data_root, encoders_dir, "part", "train.max_steps=2"))
    assert part.step == 2
    from ratlip_cli.train.loop import resume_config

    resumed = train(resume_config(part.run_dir, overrides=["train.max_steps=4"]), resume=part.run_dir)
    assert full.step == resumed.step == 4
    _, a = latest_checkpoint(full.run_dir / "checkpoints")
    _, b = latest_checkpoint(part.run_dir / "checkpoints")
    for key in ("generator", "discriminator", "ema", "opt_g", "opt_d", "rng", "noise_rng"):
        assert_same(a[key], b[key], key)
    rows = lambda d: [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in read_metrics(d / "metrics.csv")]  # noqa: E731
    assert rows(full.run_dir) == rows(part.run_dir)
    first = rows(full.run_dir)[0]
    for col in ("d_loss", "d_real", "d_fake", "d_mis", "g_loss", "g_damsm", "g_kl"):
        assert float(first[col]) == float(first[col])  # logged and finite
    assert "ma_gp" not in first and "g_clip" not in first  # no RATLIP-only terms
    assert float(first["g_damsm"]) > 0
    assert (full.run_dir / "text_encoder" / "damsm.json").is_file()
    assert (full.run_dir / "export" / "generator.safetensors").is_file()


def test_dmgan_needs_pretrained_encoders(tmp_path, data_root):
    cfg = _gan(tmp_path, data_root, tmp_path / "nowhere", "none")
    with pytest.raises(RatlipError, match="pretrain-text"):
        train(cfg)


def test_dmgan_sample_all_stages_and_eval(tmp_path, data_root, encoders_dir):
    result = train(_gan(tmp_path, data_root, encoders_dir, "run", "train.max_steps=2"))
    runner = CliRunner()
    out = tmp_path / "grid.png"
    res = runner.invoke(app, ["sample", "a big red circle on a blue background", "a small green square on a gray background",
                              "--run", str(result.run_dir), "--n", "2", "--out", str(out), "--all-stages",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "6 rows x 2 images of 32x32" in res.output.replace("\n", " ")
    res = runner.invoke(app, ["sample", "a big red circle on a blue background", "--run", str(result.run_dir), "--n", "2",
                              "--out", str(tmp_path / "g1.png"), "--device", "cpu"])
    assert res.exit_code == 0 and "1 row x 2 images of 32x32" in res.output.replace("\n", " ")
    res = runner.invoke(app, ["eval", "--run", str(result.run_dir), "--num", "12", "--json", "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    import json

    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert 0.0 <= row["damsm_r_precision"] <= 100.0
    assert row["damsm_r_precision_candidates"] == 10
    assert row["num_images"] == 12


def test_adapter_packs_and_is_batch_independent():
    torch.manual_seed(0)
    g = DmganGenerator(ngf=4, nef=6, ncf=3, z_dim=5, base_size=8).double()
    g.apply(init_weights)
    g.eval()
    adapter = DmganImageGenerator(g, dim=6, words_num=5)
    sentence, words = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, 4, dtype=torch.float64)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[1, 2:] = True
    mask[2, 1:] = True
    packed = pack_condition(sentence, words, mask, 5)
    s2, w2, m2 = unpack_condition(packed, 6, 5)
    torch.testing.assert_close(s2, sentence)
    torch.testing.assert_close(w2, words)
    assert torch.equal(m2, mask)
    noise = torch.randn(3, adapter.z_dim, dtype=torch.float64)
    with torch.no_grad():
        batch = adapter(noise, packed)
        for i in range(3):
            torch.testing.assert_close(adapter(noise[i : i + 1], packed[i : i + 1]), batch[i : i + 1], atol=1e-12, rtol=0)
    assert batch.shape == (3, 3, 32, 32)


def test_dmgan_trains_under_bf16_autocast(tmp_path, data_root, encoders_dir):
    result = train(_gan(tmp_path, data_root, encoders_dir, "bf16", "train.max_steps=2", "train.precision=amp_bf16"))
    rows = read_metrics(result.run_dir / "metrics.csv")
    assert result.step == 2 and rows and all(int(r["nonfinite"] or 0) == 0 for r in rows)
    for r in rows:
        for col in ("d_loss", "g_loss", "g_damsm", "g_kl"):
            assert torch.isfinite(torch.tensor(float(r[col]))), (col, r[col])


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_dmgan_under_torchrun_keeps_both_ranks_identical(tmp_path, data_root, encoders_dir):
    import os
    import subprocess
    import sys

    from ratlip_cli.train.loop import DEBUG_DUMP_ENV

    dump, runs = tmp_path / "dump", tmp_path / "runs"
    dump.mkdir()
    sets = [f"train.runs_dir={runs}", f"data.root={data_root}", "train.name=ddp", "train.max_steps=2",
            "train.sample_every=0", "model.family=dmgan", f"dmgan.text_encoder={encoders_dir}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ratlip_cli",
           "train", "tiny", "--device", "cpu", *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.run(cmd, env={**os.environ, DEBUG_DUMP_ENV: str(dump), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert set(r0) == set(r1) and {"generator", "discriminator", "ema"} <= set(r0)
    assert all(r0[part] for part in ("generator", "discriminator", "ema"))  # DM-GAN's head is empty
    for part in r0:
        assert set(r0[part]) == set(r1[part]), part
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), f"{part}.{k} differs between ranks"
    _, state = latest_checkpoint(runs / "ddp" / "checkpoints")
    assert state["world_size"] == 2 and state["step"] == 2
    assert [p.name for p in runs.iterdir()] == ["ddp"]  # only rank 0 wrote
