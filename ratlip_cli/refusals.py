"""Options a command cannot honour in its situation are refused with one line, never silently dropped.

The rules are data: `RULES[command]` lists, per command, the options that one situation (a mode,
another option) makes meaningless, and `CONFIG_KEYS[command]` the config keys (`--set`, `--config`)
the command actually reads. `check(command)` applies them to the options the user gave on the
command line (click's parameter source, so defaults never trip a rule); `epilog(command)` prints
the same rules in the command's `--help`, so the help and the behaviour cannot drift apart.
`ratlip train --resume`'s fixed keys are `RESUME_FIXED`, checked by `train.loop.resume_config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ratlip_cli.errors import RatlipError

# Keys a resumed run keeps from its checkpoint: the architecture (model.*, clip.*, dmgan.*), what seeds its
# data order and noise, and where it lives. Everything else (budget, logging, learning rates, loss
# weights, precision, device, data.root) may change on --resume and is applied.
RESUME_FIXED = ("model.", "clip.", "dmgan.", "train.seed", "train.name", "train.runs_dir", "data.name")


@dataclass(frozen=True)
class Rule:
    """Options (parameter names) refused when ``when(params)`` holds; ``situation`` and ``why`` explain it."""

    options: tuple[str, ...]
    when: Callable[[dict[str, Any]], bool]
    situation: str
    why: str


def _flag(name: str) -> str:
    return "--" + name.rstrip("_").replace("_", "-")


RULES: dict[str, list[Rule]] = {
    "train": [
        Rule(("gpus",), lambda p: p.get("print_config"), "with --print-config",
             "it prints the config and exits; nothing is launched"),
    ],
    "prepare": [
        Rule(("src",), lambda p: p.get("kind") == "shapes", "for shapes", "the shapes dataset is generated"),
        Rule(("seed",), lambda p: p.get("kind") != "shapes", "except for shapes",
             "only the generated shapes dataset has a seed"),
        Rule(("split_file",), lambda p: p.get("kind") != "folder", "except for folder",
             "the other layouts come with their own splits"),
        Rule(("decoded",), lambda p: p.get("fmt") == "shards", "with --format shards",
             "shards are streamed and decoded per sample; the decoded copy is for the prepared format"),
    ],
    "sample": [
        Rule(("steps",), lambda p: not p.get("interpolate"), "without --interpolate",
             "prompt rows have --n images; --steps is the length of an --interpolate row"),
        Rule(("n", "prompts_file"), lambda p: bool(p.get("interpolate")), "with --interpolate",
             "the row walks between its two prompts in --steps images"),
        Rule(("runs_dir",), lambda p: p.get("run") is not None or p.get("weights") is not None,
             "with --run or --weights", "--runs-dir only finds the newest run when neither is given"),
    ],
    "eval": [
        Rule(("captions", "preset", "config"), lambda p: p.get("run") is not None, "with --run",
             "run mode reads runs/NAME/config.yaml and captions the test split itself (use --set eval.*)"),
        Rule(("save_images",), lambda p: p.get("run") is None, "with --images",
             "folder mode already has its images"),
    ],
    "ablate": [
        Rule(("hidden", "seeds", "steps", "epochs", "minutes", "metrics", "shard", "params_only", "config", "sets",
              "eval_num", "device", "feature_extractor", "quiet", "shuffle_attention", "gradcam"),
             lambda p: p.get("merge"), "with --merge",
             "--merge only joins finished ablation folders; it trains and evaluates nothing"),
        Rule(("seeds", "steps", "epochs", "minutes", "metrics", "shard", "out", "eval_num", "device",
              "feature_extractor", "quiet", "gradcam"), lambda p: p.get("params_only") and not p.get("merge"),
             "with --params-only", "it counts parameters; nothing is trained or evaluated"),
        Rule(("shuffle_attention",), lambda p: p.get("params_only") and not p.get("merge"),
             "with --params-only", "it counts one network per h: --set model.shuffle_attention=false counts the one "
             "without shuffle attention (the 'of which SA' column says what it removes)"),
    ],
    "bench": [
        Rule(("train_batch_size",), lambda p: p.get("skip_train"), "with --skip-train",
             "no training step is timed"),
    ],
}

# The config keys each command reads (a key or a section prefix ending in "."); other keys given
# with --set (or, where noted, --config) are refused. train reads every key.
_STEP_KEYS = ("train.lr_g", "train.lr_d", "train.betas", "train.ma_gp_weight", "train.ma_gp_power",
              "train.clip_sim_weight", "train.channels_last", "train.compile")
CONFIG_KEYS: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "info": {"": (("clip.", "eval."), "info shows where the CLIP and Inception weights come from")},
    "eval": {
        "run": (("eval.", "data.root"), "run mode takes the generator and its config from the run's export"),
        "folder": (("eval.",), "folder mode scores given images"),
    },
    "gradcam": {"": (("eval.",), "the generator and its config are the run's; --set chooses the evaluation "
                                 "CLIP and the Grad-CAM target and block")},
    "bench": {"": (("model.", "clip.arch", "data.crop_size", *_STEP_KEYS),
                   "bench times the model and one training step; --hidden, --precision, --device and "
                   "--train-batch-size set the rest")},
}
# Keys with their own option: --set on them would be overwritten by the option (or its default).
OWN_OPTION: dict[str, dict[str, str]] = {
    "bench": {"model.rat.hidden": "--hidden", "train.precision": "--precision", "train.device": "--device",
              "train.batch_size": "--train-batch-size"},
}


def _given(ctx, name: str) -> bool:
    source = ctx.get_parameter_source(name)  # click's or typer's vendored ParameterSource: compare names
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def check(command: str, ctx) -> None:
    """Refuse every option given on the command line that `RULES[command]` says cannot be honoured now.

    ``ctx`` is the command's `typer.Context` (its parameters and where each value came from).
    """
    params = dict(ctx.params)
    for rule in RULES.get(command, []):
        if not rule.when(params):
            continue
        given = [_flag(o) if o != "sets" else "--set" for o in rule.options if _given(ctx, o)]
        if given:
            raise RatlipError(f"{', '.join(given)} cannot be used {rule.situation}: {rule.why}")


def _allowed(key: str, allowed: Sequence[str]) -> bool:
    return any(key == a or (a.endswith(".") and key.startswith(a)) for a in allowed)


def check_keys(command: str, keys: Sequence[str], mode: str = "", source: str = "--set") -> None:
    """Refuse config keys that ``command`` (in ``mode``) does not read."""
    own = OWN_OPTION.get(command, {})
    for key in keys:
        if key in own:
            raise RatlipError(f"{source} {key} is set by {own[key]} in `ratlip {command}`; use {own[key]} instead")
    if command not in CONFIG_KEYS:
        return
    allowed, why = CONFIG_KEYS[command][mode]
    bad = [k for k in keys if not _allowed(k, allowed)]
    if bad:
        raise RatlipError(
            f"{source} {', '.join(bad)} would be ignored by `ratlip {command}`"
            f"{f' ({mode} mode)' if mode else ''}: it reads only {', '.join(a + '*' if a.endswith('.') else a for a in allowed)}"
            f" ({why})"
        )


def set_keys(sets: Sequence[str] | None) -> list[str]:
    """The keys of ``--set key=value`` texts."""
    from ratlip_cli.config import parse_override

    return [parse_override(s)[0] for s in sets or []]


def config_file_keys(path: str | Path | None) -> list[str]:
    """The dotted keys a --config YAML file sets (leaves of its mapping)."""
    if path is None:
        return []
    from ratlip_cli.config import _load_yaml

    def leaves(d: dict[str, Any], prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            key = f"{prefix}{k}"
            out += leaves(v, key + ".") if isinstance(v, dict) else [key]
        return out

    return leaves(_load_yaml(Path(path), "config file"))


def resume_refusals(changed: Sequence[str]) -> list[str]:
    """The changed keys (dotted) that a --resume cannot honour."""
    return [k for k in changed if _allowed(k, RESUME_FIXED)]


def epilog(command: str) -> str:
    """The 'Refused' paragraph of a command's --help, from the same rules `check` applies."""
    parts = []
    for rule in RULES.get(command, []):
        flags = ", ".join(_flag(o) if o != "sets" else "--set" for o in rule.options)
        parts.append(f"{flags} {rule.situation} ({rule.why})")
    own = OWN_OPTION.get(command, {})
    if own:
        parts.append("--set " + ", ".join(f"{k} (use {v})" for k, v in own.items()))
    for mode, (allowed, _why) in CONFIG_KEYS.get(command, {}).items():
        where = f" in {mode} mode" if mode else ""
        keys = ", ".join(a + "*" if a.endswith(".") else a for a in allowed)
        parts.append(f"config keys{where} other than {keys}")
    if command == "train":
        parts.append("with --resume, --set/--config changes of " + ", ".join(
            k + "*" if k.endswith(".") else k for k in RESUME_FIXED) + " (the checkpoint fixes them)")
    if not parts:
        return ""
    return "Refused instead of ignored: " + "; ".join(parts) + "."
