"""Per-layer sensitivity estimators (Hessian trace, eigenvalue, Fisher, measured loss change) and
the additive bit-width score the search uses."""

from __future__ import annotations

from mpsearch.sensitivity.base import LayerSensitivity, SensitivityEstimator, SensitivityResult, score_table
from mpsearch.sensitivity.cache import cache_key, cached_estimate
from mpsearch.sensitivity.delta_loss import DeltaLossEstimator
from mpsearch.sensitivity.eigen import EigenvalueEstimator
from mpsearch.sensitivity.fisher import FisherEstimator
from mpsearch.sensitivity.hessian import HutchinsonEstimator
from mpsearch.sensitivity.registry import ESTIMATORS, make_estimator, signals
from mpsearch.sensitivity.validation import candidate_proxy, random_candidates, spearman, validate_proxies

__all__ = [
    "DeltaLossEstimator",
    "ESTIMATORS",
    "EigenvalueEstimator",
    "FisherEstimator",
    "HutchinsonEstimator",
    "LayerSensitivity",
    "SensitivityEstimator",
    "SensitivityResult",
    "cache_key",
    "cached_estimate",
    "candidate_proxy",
    "make_estimator",
    "random_candidates",
    "score_table",
    "signals",
    "spearman",
    "validate_proxies",
]
