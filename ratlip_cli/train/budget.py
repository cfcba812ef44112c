"""Which budget will stop a run (train.max_steps, train.epochs or train.max_minutes, whichever comes
first) and when, so the progress display counts towards the real end instead of a nominal 1000 epochs."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StopPlan:
    """The budget expected to stop the run first, at which step, and in how many seconds."""

    rule: str  # max_steps, epochs, max_minutes, or "" when no budget is set
    label: str  # e.g. "train.max_minutes=15"
    total_steps: int | None  # the step the run should stop at (an estimate for max_minutes)
    eta_s: float | None  # seconds left (None before a step rate is known for a step budget)

    def describe(self, step: int) -> str:
        """`stops at train.max_minutes=15 (step ~4,812), ETA 12:03` or the like."""
        if not self.rule:
            return "no budget set: runs until stopped"
        approx = "~" if self.rule == "max_minutes" else ""
        where = f"step {approx}{self.total_steps:,}" if self.total_steps is not None else f"step {step:,} so far"
        eta = f", ETA {format_duration(self.eta_s)}" if self.eta_s is not None else ""
        return f"stops at {self.label} ({where}){eta}"


def format_duration(seconds: float) -> str:
    """H:MM:SS or M:SS."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def stop_plan(
    step: int,
    elapsed_s: float,
    steps_per_epoch: int,
    max_steps: int,
    epochs: int,
    max_minutes: float,
    steps_per_s: float | None,
) -> StopPlan:
    """The budget that stops the run first, given the training rate so far (None before the first steps).

    Without a rate, step budgets are compared by steps and a minutes budget only wins when it is the
    only one; with a rate every budget is turned into seconds left and the smallest wins.
    """
    rate = steps_per_s if steps_per_s and steps_per_s > 0 else None
    options: list[tuple[str, str, int | None, float | None]] = []
    if max_steps > 0:
        left = max(0, max_steps - step)
        options.append(("max_steps", f"train.max_steps={max_steps}", max_steps, left / rate if rate else None))
    if epochs > 0:
        end = epochs * steps_per_epoch
        left = max(0, end - step)
        options.append(("epochs", f"train.epochs={epochs}", end, left / rate if rate else None))
    if max_minutes > 0:
        secs = max(0.0, max_minutes * 60 - elapsed_s)
        end = step + math.floor(secs * rate) if rate else None
        options.append(("max_minutes", f"train.max_minutes={max_minutes:g}", end, secs))
    if not options:
        return StopPlan("", "", None, None)
    if rate is None:
        by_steps = [o for o in options if o[0] != "max_minutes"]
        rule, label, total, eta = min(by_steps, key=lambda o: o[2]) if by_steps else options[0]
        return StopPlan(rule, label, total, eta)
    rule, label, total, eta = min(options, key=lambda o: (o[3], o[2] or 0))
    return StopPlan(rule, label, total, eta)
