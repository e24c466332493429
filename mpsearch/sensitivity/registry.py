"""Estimators by name (``search.sensitivity``) and the per-layer signals each one reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mpsearch.candidate import Bits
from mpsearch.errors import ConfigError
from mpsearch.sensitivity.base import SensitivityEstimator, SensitivityResult
from mpsearch.sensitivity.delta_loss import DeltaLossEstimator
from mpsearch.sensitivity.eigen import EigenvalueEstimator
from mpsearch.sensitivity.fisher import FisherEstimator
from mpsearch.sensitivity.hessian import HutchinsonEstimator

ESTIMATORS = ("hutchinson", "eigenvalue", "fisher", "delta_loss")

# The names a result's two coefficients go by in reports, per estimator.
_SIGNALS = {
    "hutchinson": ("hessian_trace", "activation_trace"),
    "eigenvalue": ("hessian_eigenvalue", "activation_eigenvalue"),
    "fisher": ("fisher_weight", "fisher_activation"),
}


def make_estimator(
    name: str, *, samples: int, seed: int, ranges: Mapping[str, tuple[float, float]], pairs: Sequence[Bits]
) -> SensitivityEstimator:
    """The estimator ``name`` with the run's settings (samples: most calibration samples it uses)."""
    if name == "hutchinson":
        return HutchinsonEstimator(batch_size=samples, seed=seed)
    if name == "eigenvalue":
        return EigenvalueEstimator(batch_size=min(samples, 16), seed=seed)
    if name == "fisher":
        return FisherEstimator(batch_size=samples)
    if name == "delta_loss":
        return DeltaLossEstimator(ranges, pairs, batch_size=samples)
    raise ConfigError(f"unknown sensitivity estimator {name!r}; use one of {', '.join(ESTIMATORS)}")


def signals(result: SensitivityResult) -> dict[str, dict[str, float]]:
    """Per-layer signals of a result, ``{signal: {layer: value}}``, for reports.

    Curvature estimators give their two coefficients; the measuring one gives its loss change per
    bit pair (``delta_loss_W4A8``, ...).
    """
    layers = result.layers.values()
    measured = [s for s in layers if s.delta_loss is not None]
    if measured:
        pairs = list(dict.fromkeys(p for s in measured for p in s.delta_loss or {}))
        return {f"delta_loss_W{w}A{a}": {s.name: (s.delta_loss or {}).get((w, a), float("nan")) for s in measured}
                for w, a in pairs}
    w_name, a_name = _SIGNALS.get(result.estimator, (f"{result.estimator}_weight", f"{result.estimator}_activation"))
    return {w_name: {s.name: s.weight_trace for s in layers}, a_name: {s.name: s.act_trace for s in layers}}
