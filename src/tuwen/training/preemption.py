"""SIGTERM / SIGINT during training: finish the step, save a checkpoint, stop.

Clusters preempt jobs with SIGTERM (then SIGKILL after a grace period); Ctrl-C sends
SIGINT. The handler only records the signal; the loop checks it after each step. A second
SIGINT interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Context manager that turns SIGTERM/SIGINT into a flag (main thread only)."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._previous: dict = {}

    @property
    def name(self) -> str | None:
        return self.signal.name if self.signal is not None else None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
