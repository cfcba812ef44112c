"""The bad-input matrix: for every command, broken configs, options, files and paths.

Each case runs the real CLI (CliRunner) and asserts: exit code 2, exactly one `error:` line saying
what is wrong (the last line of the output), no traceback, and no output that looks complete (the
paths a successful run would have written do not exist afterwards).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from ratlip_cli.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A tiny shapes dataset and one finished 2-step tiny run (runs/ok) to break copies of."""
    from ratlip_cli.config import resolve_config
    from ratlip_cli.data import generate_shapes
    from ratlip_cli.train import train

    root = tmp_path_factory.mktemp("bad")
    generate_shapes(root / "data", size=32, train_per_combo=1, test_per_combo=1, novel_per_combo=1)
    cfg = resolve_config("tiny", overrides=[f"train.runs_dir={root / 'runs'}", f"data.root={root / 'data'}",
                                            "train.name=ok", "train.max_steps=2", "train.sample_every=0"])
    train(cfg)
    return root


@dataclass
class Case:
    """One bad input: CLI args (with {w} = the shared world, {t} = this case's temp folder)."""

    id: str
    args: list[str]
    message: str  # a fragment of the one-line error
    setup: Callable[[Path, Path], None] = lambda w, t: None
    absent: list[str] = field(default_factory=list)  # paths (templated) that must not exist afterwards


def write(rel: str, data: bytes | str) -> Callable[[Path, Path], None]:
    def setup(w: Path, t: Path) -> None:
        path = t / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())

    return setup


def raw_folder(t: Path) -> None:
    """A valid raw `folder` layout: one image and its caption file."""
    from PIL import Image

    (t / "raw").mkdir()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(t / "raw" / "a.png")
    (t / "raw" / "a.txt").write_text("a red square\n")


def copy_run(edit: Callable[[Path], None] | None = None, rel: str = "run") -> Callable[[Path, Path], None]:
    def setup(w: Path, t: Path) -> None:
        shutil.copytree(w / "runs" / "ok", t / rel)
        if edit:
            edit(t / rel)

    return setup


def copy_data(edit: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    def setup(w: Path, t: Path) -> None:
        shutil.copytree(w / "data", t / "data")
        edit(t / "data")

    return setup


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _other_architecture(run: Path) -> None:
    doc_path = run / "export" / "generator.json"
    doc = json.loads(doc_path.read_text())
    doc["config"]["model"]["ngf"] = 16
    doc_path.write_text(json.dumps(doc))


TRAIN = ["train", "tiny", "--set", "train.runs_dir={t}/runs", "--set", "train.name=x", "--set", "data.root={w}/data"]
NEW_RUN = ["{t}/runs/x/metrics.csv", "{t}/runs/x/export"]
RUN_FILES = ["{t}/run/checkpoints/ckpt-00000004.pt"]
EVAL_RUN = ["eval", "--run", "{t}/run", "--quiet", "--num", "4"]
FOLDER = ["eval", "--images", "{t}/imgs", "--captions", "{t}/imgs/captions.csv", "--dataset", "{w}/data", "--quiet",
          "--out-csv", "{t}/scores.csv"]
GRID = ["{t}/grid.png"]

CASES = [
    # ---- config (train)
    Case("config-missing", [*TRAIN, "--config", "{t}/nope.yaml"], "cannot read config file", absent=NEW_RUN),
    Case("config-not-yaml", [*TRAIN, "--config", "{t}/c.yaml"], "is not valid YAML", write("c.yaml", "train: a: b\n"),
         absent=NEW_RUN),
    Case("config-not-utf8", [*TRAIN, "--config", "{t}/c.yaml"], "is not UTF-8 text",
         write("c.yaml", b"train:\n  name: \xff\xfe\n"), absent=NEW_RUN),
    Case("config-not-mapping", [*TRAIN, "--config", "{t}/c.yaml"], "must be a mapping", write("c.yaml", "- 1\n- 2\n"),
         absent=NEW_RUN),
    Case("config-empty-key-type", [*TRAIN, "--config", "{t}/c.yaml"], "expects true or false",
         write("c.yaml", "data:\n  flip: maybe\n"), absent=NEW_RUN),
    Case("set-unknown-key", [*TRAIN, "--set", "train.bach_size=8"], "unknown config key 'train.bach_size'",
         absent=NEW_RUN),
    Case("set-wrong-type", [*TRAIN, "--set", "train.batch_size=eight"], "expects an integer", absent=NEW_RUN),
    Case("set-no-equals", [*TRAIN, "--set", "train.batch_size"], "--set expects key=value", absent=NEW_RUN),
    Case("set-bad-choice", [*TRAIN, "--set", "train.precision=fp8"], "must be one of", absent=NEW_RUN),
    Case("set-inconsistent", [*TRAIN, "--set", "data.crop_size=64"], "must not exceed data.load_size",
         absent=NEW_RUN),
    Case("unknown-preset", ["train", "nosuch"], "unknown preset 'nosuch'"),
    # ---- datasets (train)
    Case("dataset-missing", [*TRAIN, "--set", "data.root={t}/none", "--set", "data.name=cub"], "no prepared dataset",
         absent=NEW_RUN),
    Case("manifest-not-json", [*TRAIN, "--set", "data.root={t}/data"], "manifest.json is unreadable",
         copy_data(lambda d: (d / "manifest.json").write_text("{not json")), absent=NEW_RUN),
    Case("index-missing", [*TRAIN, "--set", "data.root={t}/data"], "is incomplete (no captions.csv)",
         copy_data(lambda d: (d / "captions.csv").unlink()), absent=NEW_RUN),
    Case("index-wrong-columns", [*TRAIN, "--set", "data.root={t}/data"], "must have the columns key, split, path",
         copy_data(lambda d: (d / "images.csv").write_text("a,b\n1,2\n")), absent=NEW_RUN),
    # ---- train --resume
    Case("resume-missing-dir", ["train", "--resume", "{t}/nope"], "run directory not found"),
    Case("resume-truncated-checkpoints", ["train", "--resume", "{t}/run"], "has no usable checkpoint",
         copy_run(lambda r: [_truncate(p) for p in (r / "checkpoints").glob("*.pt")])),
    Case("resume-architecture", ["train", "--resume", "{t}/run", "--set", "model.rat.hidden=4"],
         "cannot resume", copy_run(), absent=RUN_FILES),
    Case("resume-seed", ["train", "--resume", "{t}/run", "--set", "train.seed=7", "--set", "train.max_steps=4"],
         "with other train.seed", copy_run(), absent=RUN_FILES),
    Case("resume-rename", ["train", "--resume", "{t}/run", "--set", "train.name=other"], "with other train.name",
         copy_run(), absent=["{t}/runs/other"]),
    Case("gpus-with-print-config", ["train", "tiny", "--gpus", "2", "--print-config"],
         "--gpus cannot be used with --print-config"),
    # ---- prepare
    Case("prepare-shapes-src", ["prepare", "shapes", "--src", "{t}", "--out", "{t}/out"], "--src cannot be used for shapes",
         absent=["{t}/out/manifest.json"]),
    Case("prepare-seed-not-shapes", ["prepare", "folder", "--src", "{t}", "--seed", "3", "--out", "{t}/out"],
         "--seed cannot be used except for shapes", absent=["{t}/out"]),
    Case("prepare-no-src", ["prepare", "cub", "--out", "{t}/out"], "needs --src", absent=["{t}/out"]),
    Case("prepare-out-is-file", ["prepare", "folder", "--src", "{t}/raw", "--out", "{t}/f"], "is a file; choose a folder",
         lambda w, t: (raw_folder(t), write("f", "x")(w, t))),
    Case("prepare-out-foreign", ["prepare", "folder", "--src", "{t}/raw", "--out", "{t}/mine"], "is not empty",
         lambda w, t: (raw_folder(t), write("mine/precious.txt", "keep")(w, t)),
         absent=["{t}/mine/manifest.json", "{t}/mine/images"]),
    # ---- sample
    Case("sample-no-runs", ["sample", "a red circle", "--runs-dir", "{t}/runs", "--out", "{t}/grid.png"], "{t}/runs",
         absent=GRID),
    Case("sample-weights-missing", ["sample", "x", "--weights", "{t}/g.safetensors", "--out", "{t}/grid.png"],
         "weights file not found", absent=GRID),
    Case("sample-weights-wrong-format", ["sample", "x", "--weights", "{t}/run/export/generator.json", "--out",
                                         "{t}/grid.png"], "expects an exported .safetensors", copy_run(), absent=GRID),
    Case("sample-weights-truncated", ["sample", "x", "--run", "{t}/run", "--out", "{t}/grid.png"], "does not match",
         copy_run(lambda r: _truncate(r / "export" / "generator.safetensors")), absent=GRID),
    Case("sample-weights-not-safetensors", ["sample", "x", "--run", "{t}/run", "--out", "{t}/grid.png"],
         "is not a readable safetensors file",
         copy_run(lambda r: ((r / "export" / "generator.safetensors").write_bytes(b"\x00" * 64), _drop_sha(r))),
         absent=GRID),
    Case("sample-wrong-shapes", ["sample", "x", "--run", "{t}/run", "--out", "{t}/grid.png"],
         "does not match the architecture", copy_run(_other_architecture), absent=GRID),
    Case("sample-export-json-truncated", ["sample", "x", "--run", "{t}/run", "--out", "{t}/grid.png"],
         "is not readable JSON", copy_run(lambda r: _truncate(r / "export" / "generator.json")), absent=GRID),
    Case("sample-prompts-not-utf8", ["sample", "--prompts-file", "{t}/p.txt", "--run", "{t}/run", "--out",
                                     "{t}/grid.png"], "not UTF-8", lambda w, t: (copy_run()(w, t),
                                                                                  write("p.txt", b"\xff\xfe\x00a")(w, t)),
         absent=GRID),
    Case("sample-prompts-empty", ["sample", "--prompts-file", "{t}/p.txt", "--run", "{t}/run", "--out", "{t}/grid.png"],
         "holds no prompts", lambda w, t: (copy_run()(w, t), write("p.txt", "# only a comment\n\n")(w, t)),
         absent=GRID),
    Case("sample-unknown-image-format", ["sample", "x", "--run", "{t}/run", "--out", "{t}/grid.bmp"],
         "cannot tell the image format", copy_run(), absent=["{t}/grid.bmp"]),
    Case("sample-unwritable-out", ["sample", "x", "--run", "{t}/run", "--n", "1", "--out", "{t}/file/grid.png"],
         "cannot write", lambda w, t: (copy_run()(w, t), write("file", "x")(w, t))),
    Case("sample-steps-without-interpolate", ["sample", "x", "--run", "{t}/run", "--steps", "4", "--out",
                                              "{t}/grid.png"], "--steps cannot be used without --interpolate",
         copy_run(), absent=GRID),
    Case("sample-runs-dir-with-run", ["sample", "x", "--run", "{t}/run", "--runs-dir", "{t}", "--out", "{t}/grid.png"],
         "--runs-dir cannot be used with --run", copy_run(), absent=GRID),
    # ---- eval
    Case("eval-no-mode", ["eval", "--quiet"], "give either --run"),
    Case("eval-captions-in-run-mode", [*EVAL_RUN, "--captions", "{t}/c.csv"], "--captions cannot be used with --run",
         copy_run(), absent=["{t}/run/eval.csv"]),
    Case("eval-set-model-key", [*EVAL_RUN, "--set", "model.ngf=4"], "model.ngf would be ignored", copy_run(),
         absent=["{t}/run/eval.csv"]),
    Case("eval-num-and-passes", [*EVAL_RUN, "--passes", "2"], "--num or --passes, not both", copy_run(),
         absent=["{t}/run/eval.csv"]),
    Case("eval-folder-captions-missing", FOLDER, "captions", write("imgs/a.png", b"")),
    Case("eval-folder-save-images", [*FOLDER, "--save-images", "{t}/out"], "--save-images cannot be used with --images",
         absent=["{t}/out", "{t}/scores.csv"]),
    Case("eval-folder-config-train-keys", [*FOLDER, "--config", "{t}/c.yaml"], "train.batch_size would be ignored",
         write("c.yaml", "train:\n  batch_size: 4\n"), absent=["{t}/scores.csv"]),
    Case("eval-export-changed", [*EVAL_RUN], "sha256", copy_run(lambda r: _flip_last_byte(r / "export" / "generator.safetensors")),
         absent=["{t}/run/eval.csv"]),
    # ---- ablate
    Case("ablate-merge-with-sweep-options", ["ablate", "--merge", "{t}/a", "--hidden", "0,4"],
         "--hidden cannot be used with --merge"),
    Case("ablate-params-only-with-budget", ["ablate", "tiny", "--params-only", "--steps", "3"],
         "--steps cannot be used with --params-only"),
    Case("ablate-bad-hidden", ["ablate", "tiny", "--hidden", "4,x", "--steps", "1", "--out", "{t}/abl"], "--hidden",
         absent=["{t}/abl/ablation.csv"]),
    Case("ablate-bad-shard", ["ablate", "tiny", "--shard", "3/2", "--steps", "1", "--out", "{t}/abl"], "shard",
         absent=["{t}/abl/ablation.csv"]),
    Case("ablate-swept-key", ["ablate", "tiny", "--set", "model.rat.hidden=4", "--steps", "1", "--out", "{t}/abl"],
         "use --hidden", absent=["{t}/abl"]),
    # ---- bench, info
    Case("bench-train-batch-with-skip-train", ["bench", "tiny", "--skip-train", "--train-batch-size", "8"],
         "--train-batch-size cannot be used with --skip-train"),
    Case("bench-set-own-option", ["bench", "tiny", "--set", "train.precision=amp_bf16"], "use --precision"),
    Case("bench-set-unused-key", ["bench", "tiny", "--set", "train.max_steps=3"], "train.max_steps would be ignored"),
    Case("info-set-unused-key", ["info", "tiny", "--set", "model.ngf=4"], "model.ngf would be ignored"),
]


def _drop_sha(run: Path) -> None:
    doc_path = run / "export" / "generator.json"
    doc = json.loads(doc_path.read_text())
    doc.pop("weights_sha256")
    doc_path.write_text(json.dumps(doc))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def test_matrix_has_at_least_30_distinct_cases():
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids) >= 30
    commands = {c.args[0] for c in CASES}
    assert commands == {"train", "prepare", "sample", "eval", "ablate", "bench", "info"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing_that_looks_complete(case: Case, world: Path, tmp_path: Path):
    fill = lambda s: s.replace("{w}", str(world)).replace("{t}", str(tmp_path))  # noqa: E731
    case.setup(world, tmp_path)
    result = CliRunner().invoke(app, [fill(a) for a in case.args])
    output = result.output
    assert result.exit_code == 2, output
    assert "Traceback" not in output and result.exception is None or isinstance(result.exception, SystemExit), output
    errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and output.rstrip().splitlines()[-1] == errors[0], output
    assert fill(case.message) in errors[0], (case.message, errors[0])
    for rel in case.absent:
        assert not Path(fill(rel)).exists(), rel
