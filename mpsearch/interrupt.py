"""Ctrl-C that native code cannot swallow.

Python raises KeyboardInterrupt in whatever Python code runs when SIGINT arrives. Inside a TVM
callback (MetaSchedule's builder, runner, cost model or measure callback, called from C++) it becomes
a TVM error that the tuning loop records and goes on from, so a run would tune to the end. Under
:func:`sigint_requests_stop` a SIGINT is also remembered; long native loops call :func:`check` at
their own boundaries (between tuning batches, timing rounds, stages) and stop there.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_requested = threading.Event()


def requested() -> bool:
    """Whether a SIGINT arrived under :func:`sigint_requests_stop`."""
    return _requested.is_set()


def check() -> None:
    """Raise KeyboardInterrupt if a SIGINT arrived (wherever it was swallowed)."""
    if _requested.is_set():
        raise KeyboardInterrupt


@contextmanager
def sigint_requests_stop() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt as usual and is remembered for :func:`check` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        _requested.set()
        raise KeyboardInterrupt

    _requested.clear()
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()


__all__ = ["check", "requested", "sigint_requests_stop"]
