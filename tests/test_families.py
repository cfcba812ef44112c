"""Model families: the registry, the family interface and the training-step object used apart from a run,
and the rule that nothing outside a family package names the family's classes."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch

from ratlip_cli.config import resolve_config
from ratlip_cli.errors import RatlipError
from ratlip_cli.models.family import Family, Networks, RunFiles, StepOutput, TrainingStep
from ratlip_cli.models.registry import FAMILIES, family_names, get_family

PACKAGE = Path(__file__).resolve().parents[1] / "ratlip_cli"
MODELS = PACKAGE / "models"
# The harness-facing modules of models/: they may name no family's classes either.
INTERFACE = {MODELS / "family.py", MODELS / "registry.py"}


def _classes_and_builders() -> set[str]:
    """Every class defined in ratlip_cli/models/ (networks and family packages) plus the build functions."""
    names: set[str] = set()
    for path in MODELS.rglob("*.py"):
        if path in INTERFACE:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.FunctionDef) and node.name.startswith("build_") and node.col_offset == 0:
                names.add(node.name)
    return names


def _root(node: ast.AST) -> str:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


def _identifiers(path: Path) -> set[str]:
    """Names a module's code uses but does not define itself: imported names, variables and
    attributes (not prose; not torch.Generator)."""
    used: set[str] = set()
    defined: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Name):
            used.add(node.id)
        elif isinstance(node, ast.Attribute) and _root(node) not in ("torch", "np", "numpy", "random"):
            used.add(node.attr)
        elif isinstance(node, ast.alias):
            used.add((node.asname or node.name).rsplit(".", 1)[-1])
            used.add(node.name.rsplit(".", 1)[-1])
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            defined.add(node.name)
    return used - defined


def _params_helpers() -> set[str]:
    """The family-independent helpers of models/trainable.py."""
    tree = ast.parse((MODELS / "trainable.py").read_text(encoding="utf-8"))
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}


def _model_imports(path: Path) -> set[str]:
    """The ratlip_cli.models modules a module imports names from (not counting the params helpers
    re-exported by ratlip_cli.models, nor constants)."""
    out: set[str] = set()
    helpers = _params_helpers()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ratlip_cli.models"):
            if node.module == "ratlip_cli.models" and all(a.name in helpers for a in node.names):
                continue
            if all(a.name.isupper() for a in node.names):  # constants (e.g. CLIP's normalisation)
                continue
            out.add(node.module or "")
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("ratlip_cli.models"))
    return out


# What the harness may import from ratlip_cli/models: the interface, the registry and the
# family-independent parameter helpers.
ALLOWED_MODEL_IMPORTS = {"ratlip_cli.models.family", "ratlip_cli.models.registry", "ratlip_cli.models.trainable"}


def _outside() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if MODELS not in p.parents] + sorted(INTERFACE)


def test_nothing_outside_the_family_packages_names_their_classes():
    family_names_ = _classes_and_builders()
    # The check would be empty if the scan found nothing: the RATLIP networks must be among them.
    assert {"Generator", "Discriminator", "ConditionHead", "ClipBackbone", "build_models", "RatlipStep"} <= family_names_
    outside = _outside()
    assert len(outside) > 20
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(_identifiers(p) & family_names_)
        for p in outside
        if _identifiers(p) & family_names_
    }
    assert offenders == {}


def test_the_harness_imports_only_the_family_interface():
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(_model_imports(p) - ALLOWED_MODEL_IMPORTS)
        for p in _outside()
        if _model_imports(p) - ALLOWED_MODEL_IMPORTS
    }
    assert offenders == {}


def test_the_checks_catch_a_harness_module_naming_a_family_class(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from ratlip_cli.models import Generator\nfrom ratlip_cli.models.ratlip.step import RatlipStep\n"
                   "from ratlip_cli.models import trainable_state_dict\ng = torch.Generator()\n", encoding="utf-8")
    assert _identifiers(bad) & _classes_and_builders() == {"Generator", "RatlipStep"}
    assert _model_imports(bad) - ALLOWED_MODEL_IMPORTS == {"ratlip_cli.models", "ratlip_cli.models.ratlip.step"}


def test_registry_lists_families_and_refuses_unknown_names():
    assert family_names() == tuple(FAMILIES) and {"ratlip", "galip"} <= set(family_names())
    for name in family_names():
        family = get_family(name)
        assert isinstance(family, Family) and family.name == name and family.summary
    cfg = resolve_config("tiny", overrides=["model.family=galip", "model.rat.hidden=0"])
    assert get_family(cfg).name == "galip"
    with pytest.raises(RatlipError, match="model.family"):
        resolve_config("tiny", overrides=["model.family=stylegan"])
    with pytest.raises(RatlipError, match="ratlip, galip"):
        get_family("stylegan")


def _built(family_name: str = "ratlip"):
    no_rat = ["model.rat.hidden=0"] if family_name == "galip" else []
    cfg = resolve_config("tiny", overrides=[f"model.family={family_name}", "train.batch_size=2", *no_rat])
    family = get_family(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        text = family.text_encoder(cfg, RunFiles(None, seed=0))
        nets = family.build(cfg, text)
    return cfg, family, nets


def _batch(nets: Networks, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    caps = ["a small red circle on a blue background", "a big white square on a gray background"]
    return {"image": torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1, "tokens": nets.text.tokenizer(caps)}


@pytest.mark.parametrize("family_name", ["ratlip", "galip"])
def test_step_object_runs_alone_and_its_state_continues_exactly(one_thread, family_name):
    cfg, family, nets = _built(family_name)
    assert set(nets.trainable) >= {"generator"} and nets.trainable["generator"] is nets.generator
    step = family.training_step(cfg, nets, torch.device("cpu"), torch.Generator().manual_seed(5))
    assert isinstance(step, TrainingStep) and step.ema_source is nets.generator
    step.train()
    batch = _batch(nets)
    before = {k: v.clone() for k, v in nets.generator.state_dict().items()}
    out = step(batch)
    assert isinstance(out, StepOutput) and out.losses is not None and not out.overflow
    assert out.losses.shape == (len(step.loss_columns),) and torch.isfinite(out.losses).all()
    assert any(not torch.equal(before[k], v) for k, v in nets.generator.state_dict().items())  # G moved

    # A second instance loaded from the first one's state, with the same noise RNG state, takes the
    # same next step: the state is complete (weights, optimisers, scaler).
    state = copy.deepcopy(step.state_dict())
    _, _, nets2 = _built(family_name)
    noise_state = step.noise.get_state()
    step2 = family.training_step(cfg, nets2, torch.device("cpu"), torch.Generator().manual_seed(99))
    step2.load_state_dict(state)
    step2.noise.set_state(noise_state)
    step2.train()
    a, b = step(batch), step2(batch)
    assert torch.equal(a.losses, b.losses)
    for (k, v), (_, w) in zip(nets.generator.state_dict().items(), nets2.generator.state_dict().items()):
        assert torch.equal(v, w), k


def test_export_round_trip_through_the_family(tmp_path):
    from ratlip_cli.export import export_generator, load_generator

    cfg, family, nets = _built()
    folder = tmp_path / "run"
    text = family.text_encoder(cfg, RunFiles(folder, seed=0))  # random CLIP: saved in the run folder
    assert (folder / "clip.safetensors").is_file()
    torch.manual_seed(3)
    nets = family.build(cfg, text)
    export_generator(nets.generator, cfg, folder / "export", text=nets.text, step=7)
    loaded = load_generator(folder, "cpu")
    caps = ["a small red circle on a blue background"]
    z = torch.randn(1, nets.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = nets.generator.eval()(z, nets.text.encode(nets.text.tokenizer(caps)))
        got = loaded.generator(z, loaded.embed(caps))
    assert loaded.step == 7 and torch.equal(got, want)
