"""The progress display's budget: the one that really stops the run, and its ETA."""

from __future__ import annotations

import pytest

from ratlip_cli.train.budget import format_duration, stop_plan


def test_minutes_stop_a_run_of_1000_epochs():
    # the shapes preset: 1000 epochs of 192 steps, 15 minutes; after 60 s at 4 steps/s
    plan = stop_plan(step=240, elapsed_s=60, steps_per_epoch=192, max_steps=0, epochs=1000, max_minutes=15,
                     steps_per_s=4.0)
    assert plan.rule == "max_minutes" and plan.total_steps == 240 + 14 * 60 * 4
    assert plan.eta_s == pytest.approx(14 * 60)
    assert plan.describe(240) == "stops at train.max_minutes=15 (step ~3,600), ETA 14:00"


def test_steps_stop_before_minutes_and_epochs():
    plan = stop_plan(step=10, elapsed_s=5, steps_per_epoch=100, max_steps=50, epochs=3, max_minutes=10,
                     steps_per_s=2.0)
    assert (plan.rule, plan.total_steps, plan.eta_s) == ("max_steps", 50, 20.0)
    plan = stop_plan(step=10, elapsed_s=5, steps_per_epoch=10, max_steps=50, epochs=3, max_minutes=10,
                     steps_per_s=2.0)
    assert (plan.rule, plan.total_steps, plan.eta_s) == ("epochs", 30, 10.0)


def test_before_a_rate_is_known():
    plan = stop_plan(0, 0, 100, max_steps=500, epochs=2, max_minutes=1, steps_per_s=None)
    assert (plan.rule, plan.total_steps, plan.eta_s) == ("epochs", 200, None)
    assert plan.describe(0) == "stops at train.epochs=2 (step 200)"
    plan = stop_plan(0, 0, 100, max_steps=0, epochs=0, max_minutes=2, steps_per_s=None)
    assert (plan.rule, plan.total_steps, plan.eta_s) == ("max_minutes", None, 120)
    assert plan.describe(0) == "stops at train.max_minutes=2 (step 0 so far), ETA 2:00"
    assert stop_plan(5, 1, 10, 0, 0, 0, 3.0).describe(5) == "no budget set: runs until stopped"


def test_format_duration():
    assert format_duration(59.6) == "1:00" and format_duration(3725) == "1:02:05" and format_duration(-3) == "0:00"
