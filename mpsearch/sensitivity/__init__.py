"""Per-layer sensitivity estimators (Hessian trace, eigenvalue, Fisher, measured loss change or KL)
and the additive bit-width score the ILP and the search use; joint (whole-candidate) proxies
(second-order Taylor with cross-layer terms, measured calibration KL) the search can minimise instead."""

from __future__ import annotations

from mpsearch.sensitivity.base import (
    LayerSensitivity, SensitivityError, SensitivityEstimator, SensitivityResult, score_table,
)
from mpsearch.sensitivity.data import Samples, first_samples
from mpsearch.sensitivity.cache import cache_key, cached_estimate
from mpsearch.sensitivity.delta_loss import DeltaLossEstimator, measure_skipped
from mpsearch.sensitivity.eigen import EigenvalueEstimator
from mpsearch.sensitivity.fisher import FisherEstimator
from mpsearch.sensitivity.hessian import HutchinsonEstimator
from mpsearch.sensitivity.joint import CalibKLEstimator, CandidateProxy, JointEstimator, SecondOrderEstimator
from mpsearch.sensitivity.registry import (
    ADDITIVE_FALLBACK, ESTIMATORS, JOINT_ESTIMATORS, is_joint, make_estimator, make_joint_estimator, signals,
)
from mpsearch.candidate import random_candidates
from mpsearch.sensitivity.validation import candidate_proxy, spearman, validate_proxies

__all__ = [
    "ADDITIVE_FALLBACK",
    "CalibKLEstimator",
    "CandidateProxy",
    "JOINT_ESTIMATORS",
    "JointEstimator",
    "SecondOrderEstimator",
    "is_joint",
    "make_joint_estimator",
    "DeltaLossEstimator",
    "ESTIMATORS",
    "EigenvalueEstimator",
    "FisherEstimator",
    "HutchinsonEstimator",
    "LayerSensitivity",
    "SensitivityError",
    "SensitivityEstimator",
    "Samples",
    "SensitivityResult",
    "cache_key",
    "cached_estimate",
    "first_samples",
    "candidate_proxy",
    "make_estimator",
    "measure_skipped",
    "random_candidates",
    "score_table",
    "signals",
    "spearman",
    "validate_proxies",
]
