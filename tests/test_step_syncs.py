"""A training step without host syncs (issue 31): counted on CPU, and the same training as the host check.

A host sync is counted as a call of `Tensor.item`, `__bool__`, `tolist`, `__float__`, `__int__`,
`__index__`, `cpu` or `numpy` (wrapped with counting delegates). On CPU these cost nothing, but each
is a device-to-host wait on CUDA. The step decides on the device whether it skips (non-finite
losses); the step object with ``device_skip = False`` is the host check it replaced (still used for
fp16), the reference every result here is compared with bit for bit.
"""

from __future__ import annotations

import copy
import traceback
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from state_compare import assert_same

from ratlip_cli.config import resolve_config
from ratlip_cli.models.family import RunFiles
from ratlip_cli.models.registry import get_family
from ratlip_cli.optim import adam, step_unless
from ratlip_cli.train import Trainer
from ratlip_cli.train.checkpoint import latest_checkpoint
from ratlip_cli.train.ema import EmaGenerator
from ratlip_cli.train.run import TIMING_COLUMNS, read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

SYNCS = ("item", "__bool__", "tolist", "__float__", "__int__", "__index__", "cpu", "numpy")


@contextmanager
def counted_syncs():
    """Every host-sync call on a tensor while inside, as (method, 'file:line caller')."""
    calls: list[tuple[str, str]] = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNCS}

    def counting(name):
        real = originals[name]

        def wrapper(self, *args, **kwargs):
            frame = traceback.extract_stack(limit=2)[0]
            calls.append((name, f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"))
            return real(self, *args, **kwargs)

        return wrapper

    for name in SYNCS:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield calls
    finally:
        for name, real in originals.items():
            setattr(torch.Tensor, name, real)


def test_the_counter_sees_each_kind_of_sync():
    t = torch.ones(2)
    with counted_syncs() as calls:
        t[0].item(), bool(t[0]), t.tolist(), float(t[0]), int(t[0]), t.cpu(), [1, 2][t[0].long()]
        if t[0]:
            pass
    assert [c[0] for c in calls] == ["item", "__bool__", "tolist", "__float__", "__int__", "cpu", "__index__",
                                     "__bool__"]
    assert t[0].item() == 1.0  # the real methods are back


def _step(family_name: str = "ratlip", *sets: str, device_skip: bool = True, device: str = "cpu"):
    cfg = resolve_config("tiny", overrides=[f"model.family={family_name}", f"train.device={device}", *sets])
    family = get_family(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        text = family.text_encoder(cfg, RunFiles(None, seed=0))
        nets = family.build(cfg, text).to(device)
    step = family.training_step(cfg, nets, torch.device(device), torch.Generator().manual_seed(5))
    assert step.device_skip  # fused Adam on CPU: the device-side skip is the default
    step.device_skip = device_skip
    step.train()
    return step


def _batch(step, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    caps = ["a small red circle on a blue background", "a big white square on a gray background"] * 2
    return {"image": torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1, "tokens": step.nets.text.tokenizer(caps)}


def _poison(monkeypatch, module, name: str, at: set[int]) -> None:
    """Make the ``total`` of ``module.name``'s result NaN on the given calls (1-based)."""
    real, calls = getattr(module, name), []

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) in at:
            out.total = out.total * float("nan")
        return out

    monkeypatch.setattr(module, name, poisoned)


def _state(step) -> dict:
    return copy.deepcopy(step.state_dict())


def _run(step, seeds) -> list:
    return [step(_batch(step, s)) for s in seeds]


@pytest.mark.parametrize("family_name, precision", [("ratlip", "fp32"), ("galip", "fp32"), ("ratlip", "amp_bf16")])
def test_ratlip_step_has_no_host_sync(family_name, precision):
    step = _step(family_name, f"train.precision={precision}")
    step(_batch(step, 0))  # the first step also builds Adam's state
    with counted_syncs() as calls:
        outs = _run(step, (1, 2, 3))
    assert calls == []
    assert all(o.skipped is not None and not o.skipped.item() and torch.isfinite(o.losses).all() for o in outs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "amp_bf16"])
def test_cuda_step_passes_sync_debug_mode_error(precision):
    """What the CPU count cannot see (syncs inside torch ops): CUDA refuses every synchronising call."""
    step = _step("ratlip", f"train.precision={precision}", device="cuda")
    for seed in range(2):  # the first steps allocate Adam's state
        step(_batch(step, seed))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        outs = _run(step, (2, 3, 4))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not any(o.skipped.item() for o in outs)


def test_ratlip_finite_steps_equal_the_host_check_bit_for_bit():
    device, host = _step(), _step(device_skip=False)
    a, b = _run(device, range(3)), _run(host, range(3))
    for x, y in zip(a, b):
        assert torch.equal(x.losses, y.losses) and y.skipped is None
    assert_same(_state(device), _state(host), "state")


@pytest.mark.parametrize("loss", ["d_hinge_loss", "g_loss"])
def test_ratlip_nonfinite_step_is_skipped_as_before(monkeypatch, loss):
    import ratlip_cli.models.ratlip.step as module

    _poison(monkeypatch, module, loss, at={2})
    device = _step()
    device(_batch(device, 0))
    before = _state(device)
    out = device(_batch(device, 1))
    assert out.skipped.item() and not out.overflow
    after = _state(device)
    # A non-finite D loss skips both updates; a non-finite G loss only G's (D has stepped by then).
    optims, nets = (("opt_g", "opt_d"), ("generator", "discriminator", "head")) if loss == "d_hinge_loss" else \
        (("opt_g",), ("generator",))
    for key in optims:  # optimiser state (moments and step counters) unchanged
        assert_same(after[key], before[key], key)
    for key in nets:  # parameters unchanged (BatchNorm statistics may move)
        params = {n for n, _ in getattr(device, {"generator": "G", "discriminator": "D", "head": "head"}[key])
                  .named_parameters()}
        assert_same({n: t for n, t in after[key].items() if n in params},
                    {n: t for n, t in before[key].items() if n in params}, key)
    device(_batch(device, 2))

    _poison(monkeypatch, module, loss, at={2})  # the host check, same poison
    host = _step(device_skip=False)
    host(_batch(host, 0))
    assert host(_batch(host, 1)).losses is None
    host(_batch(host, 2))
    assert_same(_state(device), _state(host), "state after a skipped step")  # buffers included


def test_step_unless_skips_adam_exactly_and_steps_bit_for_bit():
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(5)) for _ in range(3)]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt, opt_ref = adam(ps, lr=1e-2, betas=(0.0, 0.99)), adam(ref, lr=1e-2, betas=(0.0, 0.99))
    for k in range(3):
        for p, r in zip(ps, ref):
            p.grad = torch.full_like(p, 0.1 * (k + 1))
            r.grad = p.grad.clone()
        step_unless(opt, torch.tensor(False))
        opt_ref.step()
    assert all(torch.equal(p, r) for p, r in zip(ps, ref))
    assert_same(opt.state_dict(), opt_ref.state_dict(), "adam")
    before = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in ps]
    for p in ps:
        p.grad = torch.full_like(p, float("nan"))
    step_unless(opt, torch.tensor(True))
    assert_same(opt.state_dict(), before[0], "adam after a skip")
    assert all(torch.equal(p, q) for p, q in zip(ps, before[1]))


def test_masked_ema_update_is_the_plain_one_or_nothing():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    a, b = EmaGenerator(net, 0.01, 0.05), EmaGenerator(net, 0.01, 0.05)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net.train()(torch.randn(8, 3))
    a.update(4, 100)
    b.update(4, 100, skip=torch.tensor(False))
    assert_same(a.state_dict(), b.state_dict(), "ema")
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net.train()(torch.randn(8, 3))
    kept = b.state_dict()
    b.update(4, 104, skip=torch.tensor(True))
    assert_same(b.state_dict(), kept, "ema after a skip")


# ------------------------------------------------------------------------------------------ DM-GAN


def test_dmgan_step_has_no_host_sync_and_skips_a_stage_as_before(monkeypatch, encoders_dir):
    import ratlip_cli.models.dmgan.step as module

    enc = f"dmgan.text_encoder={encoders_dir}"
    step = _step("dmgan", enc)
    step(_batch(step, 0))
    with counted_syncs() as calls:
        out = step(_batch(step, 1))
    # The caption lengths are host data (taken from the batch before it moves to the device): packing
    # the LSTM input (torch keeps a PackedSequence's batch sizes on the CPU) and the per-caption word
    # loss read them; no device value is read.
    assert [c[0] + " " + c[1].split()[-1] for c in calls] == [
        "cpu forward", "cpu pad_packed_sequence", "tolist word_similarities"], calls
    assert not out.skipped.item()
    assert_same(_state(step), _state(_finite_host_twin("dmgan", enc)), "finite steps")

    # NaN at the second stage's D loss of the second step: stage 0 updated, stages 1, 2 and G skipped.
    runs = []
    for device_skip in (True, False):
        _poison(monkeypatch, module, "discriminator_loss", at={5})
        s = _step("dmgan", enc, device_skip=device_skip)
        outs = _run(s, (0, 1, 2))
        runs.append((outs, _state(s)))
    (dev_outs, dev_state), (host_outs, host_state) = runs
    assert dev_outs[1].skipped.item() and host_outs[1].losses is None
    assert not dev_outs[2].skipped.item() and torch.equal(dev_outs[2].losses, host_outs[2].losses)
    assert_same(dev_state, host_state, "after a skipped stage")


def _finite_host_twin(family_name: str, *sets: str):
    step = _step(family_name, *sets, device_skip=False)
    _run(step, (0, 1))
    return step


# ------------------------------------------------------------------------------------------ the loop


def _train_counting(tmp_path, data_root, monkeypatch, name: str, device_skip: bool):
    """Six steps (log every 3), NaN D losses at steps 2 and 5; the syncs made while each step ran."""
    import ratlip_cli.models.ratlip.step as module

    _poison(monkeypatch, module, "d_hinge_loss", at={2, 5})
    if not device_skip:
        monkeypatch.setattr(module, "skips_on_device", lambda opt: False)
    cfg = resolve_config("tiny", overrides=[
        f"train.runs_dir={tmp_path / 'runs'}", f"data.root={data_root}", f"train.name={name}", "train.epochs=0",
        "train.max_steps=6", "train.log_every=3", "train.sample_every=0", "train.checkpoint_every=6"])
    trainer = Trainer(cfg)
    per_step: dict[int, list] = {}
    try:
        trainer.setup()
        batch = next(iter(trainer._loader()))
        monkeypatch.setattr(trainer, "_loader", lambda: iter([batch] * 6))  # no loader work in the count
        real_step, started = trainer.train_step, []
        with counted_syncs() as seen:
            def first(batch):
                if not started:  # drop what came before the first step (the step-0 sample grid)
                    seen.clear()
                    started.append(True)
                return real_step(batch)

            def mark(k: int) -> None:  # the syncs since the previous step's end belong to step k
                per_step[k] = list(seen)
                seen.clear()

            trainer.train_step = first  # type: ignore[method-assign]
            trainer.on_step = mark
            result = trainer.run()
    finally:
        trainer.close()
    return result, per_step


def test_loop_reads_the_device_only_when_it_logs_and_counts_skips_as_before(tmp_path, data_root, monkeypatch):
    result, per_step = _train_counting(tmp_path, data_root, monkeypatch, "device", device_skip=True)
    assert result.step == 6
    for k in (1, 2, 4, 5):  # not log steps: no host sync in the step nor in the loop's bookkeeping
        assert per_step[k] == [], (k, per_step[k])
    assert per_step[3], "the log step reads the pending losses and flags"
    rows = [{k: v for k, v in r.items() if k not in TIMING_COLUMNS}
            for r in read_metrics(result.run_dir / "metrics.csv")]
    assert [r["nonfinite"] for r in rows] == ["1", "2"]

    monkeypatch.undo()
    host, _ = _train_counting(tmp_path, data_root, monkeypatch, "host", device_skip=False)
    host_rows = [{k: v for k, v in r.items() if k not in TIMING_COLUMNS}
                 for r in read_metrics(host.run_dir / "metrics.csv")]
    assert rows == host_rows  # the same counts and the same loss sums (skipped steps left out)
    _, a = latest_checkpoint(result.run_dir / "checkpoints")
    _, b = latest_checkpoint(host.run_dir / "checkpoints")
    for key in ("generator", "discriminator", "head", "ema", "opt_g", "opt_d", "log_acc", "nonfinite_total",
                "nonfinite_streak"):
        assert_same(a[key], b[key], key)
