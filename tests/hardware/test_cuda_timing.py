"""CUDA-event timing of the GPU session (session.py), with a fake event source: the sampling logic
runs anywhere; the real events need the NVIDIA driver (benchmarks/device_check.sh uses them)."""

from __future__ import annotations

import pytest

from mpsearch.hardware.profile import MeasureSettings
from mpsearch.hardware.session import CudaSession, event_time


class FakeEvents:
    """A GPU clock that advances 0.25 ms per call of the timed function."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls = 0

    def tick(self) -> None:
        self.now += 0.25e-3
        self.calls += 1

    def record(self) -> float:
        return self.now

    def elapsed_s(self, start: float, stop: float) -> float:
        return stop - start


def test_event_time_takes_repeat_samples_of_at_least_min_repeat_ms() -> None:
    ev = FakeEvents()
    samples = event_time(ev.tick, ev, MeasureSettings(number=2, repeat=5, min_repeat_ms=10))
    assert len(samples) == 5 and all(s == pytest.approx(0.25e-3) for s in samples)
    # number grew from 2 to at least 40 calls (10 ms at 0.25 ms a call) before the samples were taken
    assert ev.calls >= 5 * 40
    assert len(event_time(ev.tick, ev, MeasureSettings(number=50, repeat=7, min_repeat_ms=1), repeat=2)) == 2


def test_cuda_session_times_the_runtime_module_of_a_vm() -> None:
    ev = FakeEvents()
    seen = []

    class Runtime:
        def __getitem__(self, name: str) -> object:
            return lambda *args: (seen.append((name, args)), ev.tick())

    class VM:
        module = Runtime()

    session = CudaSession(device=None, events=ev)
    out = session.time(VM(), "invoke_stateful", ["main"], MeasureSettings(number=1, repeat=3, min_repeat_ms=0))
    assert len(out) == 3 and seen[0] == ("invoke_stateful", ("main",))
