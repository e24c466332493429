"""Ctrl-C that native code cannot swallow.

Python raises KeyboardInterrupt in whatever Python code runs when SIGINT arrives. Inside a TVM
callback (MetaSchedule's builder, runner, cost model or measure callback, called from C++) it becomes
a TVM error that the tuning loop records and goes on from, so a run would tune to the end. Under
:func:`sigint_requests_stop` a SIGINT is also remembered; long native loops call :func:`check` at
their own boundaries (between tuning batches, timing rounds, stages) and stop there; around
native loops that call back into Python (MetaSchedule's tuning), :func:`deferred` keeps the SIGINT
from being raised inside those callbacks at all.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_requested = threading.Event()
_deferring = False  # inside deferred(): the handler only remembers a SIGINT (main thread only)


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
        if not _deferring:
            raise KeyboardInterrupt

    _requested.clear()
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()


@contextmanager
def deferred() -> Iterator[None]:
    """Within: a SIGINT under :func:`sigint_requests_stop` is remembered and not raised, so no
    KeyboardInterrupt unwinds through native frames. MetaSchedule calls Python (its search strategy,
    measure callbacks) from C++ many times a second, and a KeyboardInterrupt raised asynchronously in
    one of them unwinds through tvm-ffi's frames: a CI run of the Ctrl-C-during-tuning test ended in
    SIGSEGV instead of exit 130 (once; it passes otherwise), and this takes that path away. The code
    inside stops at its own boundaries (:func:`requested`); the caller calls :func:`check` after it."""
    global _deferring
    before = _deferring
    _deferring = True
    try:
        yield
    finally:
        _deferring = before


__all__ = ["check", "deferred", "requested", "sigint_requests_stop"]
