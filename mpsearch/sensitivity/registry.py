"""Estimators by name (``search.sensitivity``) and the per-layer signals each one reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from mpsearch.candidate import Bits
from mpsearch.errors import ConfigError
from mpsearch.sensitivity.base import Batch, SensitivityEstimator, SensitivityResult
from mpsearch.sensitivity.delta_loss import DeltaLossEstimator
from mpsearch.sensitivity.eigen import EigenvalueEstimator
from mpsearch.sensitivity.fisher import FisherEstimator
from mpsearch.sensitivity.hessian import HutchinsonEstimator
from mpsearch.sensitivity.joint import CalibKLEstimator, JointEstimator, SecondOrderEstimator

ESTIMATORS = ("hutchinson", "eigenvalue", "fisher", "delta_loss", "delta_kl")  # per layer: an additive score
JOINT_ESTIMATORS = ("second_order", "calib_kl")  # per candidate: not additive
#: The additive estimator behind the ILP and the warm start when ``search.sensitivity`` is a joint one.
ADDITIVE_FALLBACK = "hutchinson"

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
    if name == "delta_kl":
        return DeltaLossEstimator(ranges, pairs, batch_size=samples, metric="kl")
    if name in JOINT_ESTIMATORS:
        raise ConfigError(f"{name!r} scores whole candidates, not layers; build it with make_joint_estimator")
    raise ConfigError(f"unknown sensitivity estimator {name!r}; use one of {', '.join(ESTIMATORS)}")


def is_joint(name: str) -> bool:
    return name in JOINT_ESTIMATORS


def make_joint_estimator(
    name: str, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch],
    ranges: Mapping[str, tuple[float, float]], *, samples: int, calib_samples: int | None = None,
) -> JointEstimator:
    """The joint (candidate-level) estimator ``name`` on ``batches`` of calibration data.

    ``samples``: the sensitivity samples (``second_order``'s HVP batch); ``calib_samples``: the
    calibration images ``calib_kl`` measures on (default: all of ``batches``).
    """
    if name == "second_order":
        return SecondOrderEstimator(model, layers, batches, ranges, batch_size=samples)
    if name == "calib_kl":
        n = calib_samples or sum(len(b[1]) for b in batches)
        return CalibKLEstimator(model, layers, batches, ranges, batch_size=n)
    raise ConfigError(f"unknown joint estimator {name!r}; use one of {', '.join(JOINT_ESTIMATORS)}")


def signals(result: SensitivityResult) -> dict[str, dict[str, float]]:
    """Per-layer signals of a result, ``{signal: {layer: value}}``, for reports.

    Curvature estimators give their two coefficients; the measuring one gives its loss change per
    bit pair (``delta_loss_W4A8``, ...).
    """
    layers = result.layers.values()
    measured = [s for s in layers if s.delta_loss is not None]
    if measured:
        pairs = list(dict.fromkeys(p for s in measured for p in s.delta_loss or {}))
        return {f"{result.estimator}_W{w}A{a}": {s.name: (s.delta_loss or {}).get((w, a), float("nan")) for s in measured}
                for w, a in pairs}
    w_name, a_name = _SIGNALS.get(result.estimator, (f"{result.estimator}_weight", f"{result.estimator}_activation"))
    return {w_name: {s.name: s.weight_trace for s in layers}, a_name: {s.name: s.act_trace for s in layers}}
