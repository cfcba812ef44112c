"""Options, constants and parsing of `ratlip ablate`: metrics, shards, the swept axis and its cells."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


from ratlip_cli.errors import RatlipError
from ratlip_cli.models.ratlip.params import PAPER_HIDDENS
from ratlip_cli.options import parse_int_list


SWEEP_FORMAT = "ratlip-ablate"
SWEEP_VERSION = 1
SWEEP_FILE = "sweep.yaml"
CSV_FILE = "ablation.csv"
PLOT_FILE = "ablation.png"
DEFAULT_PRESET = "shapes"
# Captions, noise, KID subsets and R-precision candidates of every evaluation (same for every row).
EVAL_SEED = 0

METRIC_NAMES = ("cs", "fid", "kid", "rp", "shapes")
DEFAULT_METRICS = ("cs", "fid", "kid", "rp")
# The default swept key (the paper's Table II) and the seed, swept by every ablation.
RAT_KEY = "model.rat.hidden"
# Shuffle attention on/off (`--shuffle-attention true,false`): a second axis crossed with the swept key.
SA_KEY = "model.shuffle_attention"
SWEPT_KEYS = (RAT_KEY, "train.seed", SA_KEY)
# A cell whose network has no shuffle attention carries this suffix on its swept value ("64|sa=false");
# the CSV keeps the plain value in `value` and the setting in `shuffle_attention`.
SA_OFF_SUFFIX = "|sa=false"
# Settings that cannot change a row's numbers: paths, device, logging cadence, batching of eval.
NEUTRAL_KEYS = frozenset(
    {
        "train.runs_dir",
        "train.name",
        "train.device",
        "train.log_every",
        "train.sample_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "data.num_workers",
        "clip.cache_dir",
        "eval.cache_dir",
        "eval.inception",
        "eval.batch_size",
    }
)

# sweep_key/value: the swept key and this row's value (old RAT-only CSVs lack them: h is the value);
# h is the row's RAT hidden size whatever the swept key.
KEY_COLUMNS = ["sweep_key", "value", "h", "shuffle_attention", "seed"]
PARAM_COLUMNS = [
    "bridge_params",
    "rat_params",
    "sa_params",
    "generator_trainable",
    "generator_total",
    "discriminator_trainable",
    "discriminator_total",
    "head_params",
    "trainable_params",
    "total_params",
]
# Settings of `--gradcam` only: they change no training and no metric column, and each row records
# them (`gradcam_protocol`), so they are left out of the sweep spec like the neutral keys.
GRADCAM_KEYS = frozenset({"eval.gradcam_target", "eval.gradcam_block"})
# Filled by `ratlip ablate --gradcam` on shapes (ratlip_cli/gradcam.py): the mean Grad-CAM mass inside
# the checker's object, the object's mean share of the image (the control), the images counted, and the
# target/layer/evaluation CLIP that made the maps.
GRADCAM_COLUMNS = ["gradcam_object_share", "gradcam_object_area", "gradcam_images", "gradcam_protocol"]
METRIC_COLUMNS = {
    "cs": ["clip_score"],
    "fid": ["fid"],
    "kid": ["kid_x1e3", "kid_std_x1e3"],
    "rp": ["r_precision"],
    "shapes": ["shapes_all", "shapes_colour", "shapes_shape", "shapes_background", "shapes_size"],
}
PROTOCOL_COLUMNS = ["generator", "feature_extractor", "eval_clip", "clip_metrics_note", "eval_images", "steps", "images", "device", "run", "sweep"]
# Columns that depend on wall-clock time or on when the row was made (left out when comparing rows).
TIMING_COLUMNS = ["train_s", "train_img_per_s", "eval_s", "wall_s", "time"]
SCORE_COLUMNS = [c for m in METRIC_NAMES for c in METRIC_COLUMNS[m]]
COLUMNS = KEY_COLUMNS + PARAM_COLUMNS + SCORE_COLUMNS + GRADCAM_COLUMNS + PROTOCOL_COLUMNS + TIMING_COLUMNS

NOT_FID_MARK = "random-tiny (NOT FID)"
_SHARD_SUFFIX = re.compile(r"-shard-\d+-of-\d+$")


# ----------------------------------------------------------------------------- options and parsing


@dataclass
class AblateOptions:
    """What `ratlip ablate` was asked for (the CLI only parses; everything is checked here)."""

    preset: str | None = None
    config: Path | None = None
    sets: list[str] = field(default_factory=list)
    hiddens: str | None = None
    sweep: str | None = None
    seeds: str = "0"
    steps: int | None = None
    epochs: int | None = None
    minutes: float | None = None
    metrics: str | None = None
    out: Path | None = None
    shard: str | None = None
    eval_num: int | None = None
    device: str | None = None
    feature_extractor: str | None = None
    progress: bool = True
    shuffle_attention: str | None = None
    gradcam: bool = False


def parse_metrics(text: str | None) -> list[str]:
    """'cs,fid' -> ['cs', 'fid'] in canonical order; unknown names are an error."""
    if text is None:
        return list(DEFAULT_METRICS)
    names = [p.strip().lower() for p in str(text).split(",") if p.strip()]
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown:
        raise RatlipError(f"unknown metric '{unknown[0]}' in --metrics; choose from {', '.join(METRIC_NAMES)}")
    if not names:
        raise RatlipError(f"--metrics needs at least one of {', '.join(METRIC_NAMES)}")
    return [m for m in METRIC_NAMES if m in names]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'2/4' -> (2, 4): shard 2 of 4 (1-based)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise RatlipError(f"--shard expects i/n (e.g. 1/2), got '{text}'")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise RatlipError(f"--shard {text}: i must be between 1 and n")
    return i, n


@dataclass(frozen=True)
class Axis:
    """The swept config key and its values (as the text a --set would give)."""

    key: str
    values: tuple[str, ...]

    @property
    def is_rat(self) -> bool:
        return self.key == RAT_KEY


def parse_axis(opts: AblateOptions) -> Axis:
    """The sweep of `opts`: --sweep KEY=V1,V2 or --hidden H1,H2 (default: the paper's hidden sizes)."""
    if opts.sweep is not None and opts.hiddens is not None:
        raise RatlipError("give --sweep or --hidden, not both (--hidden H1,H2 is --sweep model.rat.hidden=H1,H2)")
    if opts.sweep is None:
        hiddens = parse_int_list(opts.hiddens if opts.hiddens is not None else ",".join(map(str, PAPER_HIDDENS)),
                                 "--hidden")
        return Axis(RAT_KEY, tuple(map(str, hiddens)))
    key, sep, text = str(opts.sweep).partition("=")
    key = key.strip()
    if not sep or not key:
        raise RatlipError(f"--sweep expects KEY=V1,V2,... (e.g. ecagan.carafe=true,false), got '{opts.sweep}'")
    if key == "train.seed":
        raise RatlipError("--sweep train.seed: seeds are swept by --seeds")
    if key in NEUTRAL_KEYS:
        raise RatlipError(f"--sweep {key}: this key cannot change a result (paths, device, logging); sweep another key")
    if key == RAT_KEY:
        return Axis(RAT_KEY, tuple(map(str, parse_int_list(text, "--sweep model.rat.hidden"))))
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise RatlipError(f"--sweep {key}= needs at least one value")
    twice = [v for k, v in enumerate(values) if v in values[:k]]
    if twice:
        raise RatlipError(f"--sweep {key} lists {twice[0]} twice")
    return Axis(key, tuple(values))


def parse_shuffle_attention(text: str | None, default: bool) -> tuple[bool, ...]:
    """'true,false' -> (True, False): the shuffle-attention settings crossed with the swept values
    (default: the config's `model.shuffle_attention` alone)."""
    if text is None:
        return (bool(default),)
    words = {"true": True, "on": True, "false": False, "off": False}
    out: list[bool] = []
    for part in (p.strip().lower() for p in str(text).split(",") if p.strip()):
        if part not in words:
            raise RatlipError(f"--shuffle-attention expects true and/or false (e.g. true,false), got '{part}'")
        if words[part] in out:
            raise RatlipError(f"--shuffle-attention lists {part} twice")
        out.append(words[part])
    if not out:
        raise RatlipError("--shuffle-attention needs true, false or true,false")
    return tuple(out)


def cell_value(value: Any, shuffle_attention: bool = True) -> str:
    """The grid's value of a cell: the swept value, with `SA_OFF_SUFFIX` when shuffle attention is off."""
    return str(value) if shuffle_attention else f"{value}{SA_OFF_SUFFIX}"


def split_cell(value: Any) -> tuple[str, bool]:
    """(swept value, shuffle attention on?) of a grid value made by `cell_value`."""
    text = str(value)
    if text.endswith(SA_OFF_SUFFIX):
        return text[: -len(SA_OFF_SUFFIX)], False
    return text, True


def grid(values: Sequence[Any], seeds: Sequence[int]) -> list[tuple[Any, int]]:
    """Every (value, seed) of the sweep, value-major in the order given."""
    return [(v, s) for v in values for s in seeds]


def shard_cells(cells: Sequence[tuple[Any, int]], shard: tuple[int, int] | None) -> list[tuple[Any, int]]:
    """Shard i of n takes cells i-1, i-1+n, i-1+2n, ... of the grid (round robin: balanced across values)."""
    if shard is None:
        return list(cells)
    i, n = shard
    return [c for k, c in enumerate(cells) if k % n == i - 1]


def run_name(value: Any, seed: int, key: str = RAT_KEY) -> str:
    """The run folder of one cell inside the ablation folder: h64-s0 for the RAT sweep, else
    <last part of the key>-<value>-s<seed> (e.g. carafe-false-s0)."""
    value, sa = split_cell(value)
    nosa = "" if sa else "-nosa"
    if key == RAT_KEY:
        return f"h{value}{nosa}-s{seed}"
    slug = re.sub(r"[^A-Za-z0-9.]+", "_", str(value)).strip("_") or "empty"
    return f"{key.rsplit('.', 1)[-1]}-{slug}{nosa}-s{seed}"


def row_axis(row: dict[str, Any]) -> tuple[str, str]:
    """(swept key, grid value) of a CSV row; rows of RAT-only CSVs (no sweep_key column) are h sweeps.
    The grid value carries `SA_OFF_SUFFIX` for rows with shuffle attention off (older rows: on)."""
    key = row.get("sweep_key") or RAT_KEY
    value = row.get("value")
    sa = str(row.get("shuffle_attention", "")).strip().lower() not in ("false", "0")
    return key, cell_value(value if value not in (None, "") else row["h"], sa)


def row_key(row: dict[str, Any]) -> tuple[str, int]:
    """(value, seed): what identifies a row within one sweep."""
    return row_axis(row)[1], int(row["seed"])


def rows_key(rows: Sequence[dict[str, Any]]) -> str:
    """The swept key of an ablation's rows (RAT_KEY when there are none)."""
    keys = {row_axis(r)[0] for r in rows}
    if len(keys) > 1:
        raise RatlipError(f"the rows sweep several keys ({', '.join(sorted(keys))}); one ablation sweeps one key")
    return keys.pop() if keys else RAT_KEY


def _value_order(value: str) -> tuple[int, float, str, int]:
    """Sort key of a grid value: numbers first by size, then text; shuffle attention on before off."""
    base, sa = split_cell(value)
    try:
        return (0, float(base), "", 0 if sa else 1)
    except ValueError:
        return (1, 0.0, base, 0 if sa else 1)
