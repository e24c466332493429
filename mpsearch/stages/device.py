"""Stage ``device``: the hardware profile a run uses and the :class:`~mpsearch.hardware.base.Backend`
made for it (before calibration, so an unreachable board fails in seconds)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from mpsearch.config import HwProfileConfig, RunConfig
from mpsearch.hardware.base import Backend
from mpsearch.hardware.profile import HwProfile, load_profile

#: ``(profile, cache_dir, progress) -> Backend``: the seam tests fill with :class:`mpsearch.testing.TableBackend`.
BackendFactory = Callable[[HwProfile, Path, bool], Backend]


def configured_profile(cfg: RunConfig | HwProfileConfig) -> HwProfile:
    """The hardware profile named by the config (a run's, or its ``hw_profile`` group), with its per-run
    overrides applied."""
    hw = cfg.hw_profile if isinstance(cfg, RunConfig) else cfg
    # hw_profile.cost=estimated asks for roofline estimates explicitly (never a fallback for an unreachable device)
    profile = load_profile(hw.name, {"cost": hw.cost} if hw.cost else None)
    if hw.trials_per_task is not None:
        profile = replace(profile, tuning=replace(profile.tuning, trials_per_task=hw.trials_per_task))
    if hw.threads is not None:
        profile = replace(profile, threads=hw.threads)
    return profile


def default_backend(profile: HwProfile, cache_dir: Path, progress: bool) -> Backend:
    if profile.estimated:  # asked for explicitly (profile or hw_profile.cost): roofline, compile-only
        from mpsearch.hardware.estimate import EstimateBackend

        return EstimateBackend(profile, cache_dir, progress=progress)
    from mpsearch.hardware.tvm_backend import TVMBackend

    backend = TVMBackend(profile, cache_dir, progress=progress)
    if profile.device == "local":
        from mpsearch.hardware.threads import use_threads

        use_threads(profile.resolved_threads())  # a sweep's jobs share one process and its TVM thread pool
    return backend
