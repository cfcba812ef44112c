"""`train.compile`: none / generator / auto, the reason printed, and the step's generator call going through the compiled
wrapper while the module, its state dict and the EMA copy stay uncompiled (torch.compile is stubbed: a real CPU
compile takes minutes here)."""

from __future__ import annotations

import shutil

import pytest
import torch

from ratlip_cli.config import resolve_config
from ratlip_cli.errors import RatlipError
from ratlip_cli.models.family import RunFiles
from ratlip_cli.models.registry import get_family
from ratlip_cli import compiling
from ratlip_cli.compiling import compile_decision

pytestmark = pytest.mark.usefixtures("one_thread")


def test_decisions_and_reasons(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_decision("none", cpu) == (False, "train.compile=none: generator eager")
    ok, why = compile_decision("auto", cpu)
    assert not ok and "eager on cpu" in why and "train.compile=generator" in why
    has_cxx = any(shutil.which(c) for c in ("g++", "c++", "clang++"))
    ok, why = compile_decision("generator", cpu)
    assert ok == has_cxx and ("compiled" in why if ok else "C++ compiler" in why)
    monkeypatch.setattr(compiling, "compile_unavailable", lambda device: "triton is not installed")
    assert compile_decision("auto", cuda) == (False, "train.compile=auto: generator eager: triton is not installed")
    monkeypatch.setattr(compiling, "compile_unavailable", lambda device: None)
    ok, why = compile_decision("auto", cuda)
    assert ok and why.startswith("train.compile=auto: generator compiled")


def test_config_rejects_unknown_setting():
    with pytest.raises(RatlipError, match="train.compile"):
        resolve_config("tiny", overrides=["train.compile=yes"])


def _step(setting: str):
    cfg = resolve_config("tiny", overrides=[f"train.compile={setting}", "train.device=cpu"])
    family = get_family(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        nets = family.build(cfg, family.text_encoder(cfg, RunFiles(None, seed=0)))
    step = family.training_step(cfg, nets, torch.device("cpu"), torch.Generator().manual_seed(5))
    step.train()
    return step


def _batch(step):
    gen = torch.Generator().manual_seed(0)
    return {"image": torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1,
            "tokens": step.nets.text.tokenizer(["a small red circle on a blue background"] * 2)}


def test_auto_on_cpu_runs_the_module_itself(capsys):
    step = _step("auto")
    assert not step.compiled and step.run_g is step.G
    assert "eager on cpu" in capsys.readouterr().err  # the notice says why


def test_generator_calls_the_compiled_wrapper_and_keeps_the_module(monkeypatch):
    calls = []

    def fake_compile(module, **kwargs):
        def run(*args):
            calls.append(len(args))
            return module(*args)
        return run

    monkeypatch.setattr(compiling, "compile_unavailable", lambda device: None)
    monkeypatch.setattr(torch, "compile", fake_compile)
    step, eager = _step("generator"), _step("none")
    assert step.compiled and step.run_g is not step.G and eager.run_g is eager.G
    a, b = step(_batch(step)), eager(_batch(eager))
    assert calls == [2]  # G(z, s) of the D step went through the wrapper, once
    assert torch.equal(a.losses, b.losses)  # the same computation as eager (the stub compiles nothing)
    assert list(step.state_dict()["generator"]) == list(eager.state_dict()["generator"])
    assert type(step.G).__name__ == type(eager.G).__name__  # the module (what the EMA copies) is not wrapped
