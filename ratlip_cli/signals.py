"""Stopping a long job cleanly on SIGINT/SIGTERM: a flag the loop reads at step boundaries."""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the next step boundary and stops.

    A second SIGINT raises KeyboardInterrupt at once (for a user who really wants out).
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = name

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader worker init: leave SIGINT/SIGTERM to the training process.

    torchrun, SLURM and Ctrl-C signal a whole process group; a loader worker killed by the signal
    would make the training process fail before it checkpoints, instead of stopping at the step
    boundary (`StopFlag`). The DataLoader shuts its workers down itself.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
