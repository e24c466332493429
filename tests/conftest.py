"""Shared fixtures: a tiny BN-folded residual CNN, its calibration batches and activation ranges."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

from mpsearch.candidate import Candidate
from mpsearch.hardware.peaks import PEAKS_DIR_ENV, store_peak
from mpsearch.hardware.profile import PeakRates, load_profile
from mpsearch.quant.calibration import calibrate, record_input_means
from mpsearch.quant.prepare import PreparedModel, prepare_model
from mpsearch.testing import synthetic_split, tiny_resnet

# The property tests check behaviour, not speed: on a loaded 2-core runner Hypothesis' generation-speed
# health check and its per-example deadline failed tests whose properties held (a profile test drew
# 1 input in 1.08 s while benchmarks ran beside the suite).
settings.register_profile("mpsearch", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mpsearch")

#: The default-model sweep's bit pairs (tests/test_sweep.py: search.w_bits = a_bits = [8, 32]).
DEFAULT_SWEEP_PAIRS = [(32, 32), (8, 8)]



@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep each test class's tests together, in the order the random-order plugin (which runs before this
    hook) drew for them and at the place its first test was drawn: the plugin shuffles a module's tests
    across its classes, and every time the order leaves a class and comes back its class-scoped fixtures
    are built again (tests/hardware/test_backend_suite.py's tuned TVM backend five times in one CI run,
    27 s each)."""
    groups: dict[object, list[pytest.Item]] = {}
    for i, item in enumerate(items):
        cls = getattr(item, "cls", None)
        groups.setdefault((item.nodeid.split("::")[0], cls.__name__) if cls is not None else i, []).append(item)
    items[:] = [item for group in groups.values() for item in group]


#: What ``peak: measure`` profiles (host_cpu, host_cpu_1t) price ``cost: estimated`` with in tests: fixed
#: rates, so that no test measures this machine on the side (seconds each, and rates that vary by host).
#: tests/hardware/test_peaks.py measures for real, in a cache folder of its own.
TEST_HOST_PEAK = PeakRates(fp32_gflops=150.0, int8_gops=600.0, dram_gbps=15.0, launch_us=2.0,
                           source="fixed test rates (tests/conftest.py), not measured")


@pytest.fixture(scope="session", autouse=True)
def fixed_host_peaks(tmp_path_factory) -> Iterator[Path]:
    """A peaks cache (``$MPSEARCH_PEAKS_DIR``, inherited by the CLI subprocesses) holding
    :data:`TEST_HOST_PEAK` as this machine's measured peaks of the host profiles at every thread count,
    for the whole session; the real ``~/.cache`` is never read or written."""
    folder = tmp_path_factory.mktemp("peaks")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PEAKS_DIR_ENV, str(folder))
        for name in ("host_cpu", "host_cpu_1t"):
            for threads in range(1, (os.cpu_count() or 1) + 1):
                store_peak(replace(load_profile(name), threads=threads), TEST_HOST_PEAK)
        yield folder


@pytest.fixture(scope="session")
def tiny_prepared() -> PreparedModel:
    return prepare_model(tiny_resnet(), (1, 1, 8, 8))


@pytest.fixture(scope="session")
def tiny_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    ds = synthetic_split("calib", 64)
    return [(ds.tensors[0][i:i + 32], ds.tensors[1][i:i + 32]) for i in (0, 32)]


@pytest.fixture(scope="session")
def tiny_ranges(tiny_prepared: PreparedModel, tiny_batches: list) -> dict[str, tuple[float, float]]:
    return calibrate(tiny_prepared.graph_module, tiny_prepared.layer_names, tiny_batches)


@pytest.fixture(scope="session")
def tiny_corrected(tiny_batches: list) -> tuple[PreparedModel, dict[str, tuple[float, float]]]:
    """The tiny CNN prepared afresh and calibrated for bias correction: its layers carry their input
    channels' means (``record_input_means``), so quantized layers correct their bias. Its ranges."""
    prepared = prepare_model(tiny_resnet(), (1, 1, 8, 8))
    ranges = calibrate(prepared.graph_module, prepared.layer_names, tiny_batches)
    record_input_means(prepared.graph_module, prepared.layer_names, tiny_batches)
    return prepared, ranges


def default_model_candidate(names: list[str]) -> Candidate:
    """tests/test_default_model.py's seeded mixed candidate of the default model: FP32, W8A8, W4A8, W4A4."""
    pairs = [(32, 32), (8, 8), (4, 8), (4, 4)]
    rng = np.random.default_rng(0)
    return Candidate({n: pairs[rng.integers(len(pairs))] for n in names})


@dataclass
class TunedCache:
    """A cache folder holding the default model's host kernels tuned for ``host_cpu_1t`` at 1 trial."""

    root: Path  # a cache_dir: root / "tvm" / f"host_cpu_1t-{key}"
    dir: Path  # the backend's folder (tuning database only: no kernel timings)
    tuned_kernels: int
    prepared: Any
    ranges: dict[str, tuple[float, float]]


@pytest.fixture(scope="session")
def default_model_tuned(tmp_path_factory) -> TunedCache:
    """ResNet-20's kernels for the sweep's bit pairs and test_default_model's candidate, tuned ONCE per
    session for host_cpu_1t (1 MetaSchedule trial per kernel, the profile's measure settings and one
    thread, as ``hw_profile=host_cpu_1t hw_profile.trials_per_task=1`` does), so the database key is the
    one the sweep's host jobs compute. Users copy ``dir``; nothing writes here after tuning."""
    pytest.importorskip("tvm")
    from mpsearch.hardware.export_lib import use_threads
    from mpsearch.hardware.profile import load_profile
    from mpsearch.hardware.tvm_backend import TVMBackend
    from mpsearch.models.fmnist import load_split
    from mpsearch.models.registry import resnet20_fmnist

    root = tmp_path_factory.mktemp("default_model_tuned")
    profile = load_profile("host_cpu_1t")
    profile = replace(profile, tuning=replace(profile.tuning, trials_per_task=1, trials_per_iter=1))
    prepared = prepare_model(resnet20_fmnist(), (1, 1, 28, 28))
    calib = load_split("calib", 512).tensors
    ranges = calibrate(prepared.graph_module, prepared.layer_names, [(calib[0], calib[1])])
    names = prepared.layer_names
    before = os.environ.get("TVM_NUM_THREADS")
    try:
        backend = TVMBackend(profile, root, progress=False)
        kernels: dict[str, tuple[str, Any]] = {}
        for cand in [Candidate.uniform(names, *p) for p in DEFAULT_SWEEP_PAIRS] + [default_model_candidate(names)]:
            for key, label, mod in backend.layer_kernels(prepared, cand, ranges)[1].values():
                kernels.setdefault(key, (label, mod))
        backend.tune(kernels)
    finally:  # host_cpu_1t set one thread for this process's TVM pool: give the other tests theirs back
        use_threads(int(before) if before else (os.cpu_count() or 1))
    return TunedCache(root, backend.dir, backend.stats["tuned_kernels"], prepared, ranges)
