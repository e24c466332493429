"""Per-layer sensitivity (Hessian traces) and the additive bit-width score the search uses."""

from __future__ import annotations

from mpsearch.sensitivity.base import LayerSensitivity, SensitivityEstimator, SensitivityResult, score_table
from mpsearch.sensitivity.cache import cache_key, cached_estimate
from mpsearch.sensitivity.hessian import HutchinsonEstimator

__all__ = [
    "HutchinsonEstimator",
    "LayerSensitivity",
    "SensitivityEstimator",
    "SensitivityResult",
    "cache_key",
    "cached_estimate",
    "score_table",
]
