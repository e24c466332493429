"""Proxy validation: does a sensitivity proxy rank candidates like their measured accuracy drop?"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mpsearch.candidate import Bits, Candidate
from mpsearch.errors import ConfigError

log = logging.getLogger(__name__)

ScoreTable = Mapping[str, Mapping[Bits, float]]
#: An additive score table, or a joint proxy called on the whole candidate (e.g. a ``CandidateProxy``).
Proxy = ScoreTable | Callable[[Candidate], float]


def candidate_proxy(score: Proxy, candidate: Mapping[str, Bits]) -> float:
    """The proxy of a candidate: the sum of its layers' scores, or the joint proxy's value."""
    if callable(score):
        return float(score(candidate if isinstance(candidate, Candidate) else Candidate(candidate)))
    try:
        return float(sum(score[name][tuple(bits)] for name, bits in candidate.items()))
    except KeyError as e:
        raise ConfigError(f"the score table has no entry for {e.args[0]!r}; score the candidate's layers and pairs")


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman rank correlation (scipy, ties averaged), or None where undefined (n < 3, a constant side)."""
    from scipy.stats import spearmanr

    if len(xs) != len(ys):
        raise ValueError("xs and ys must have the same length")
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    rho = float(spearmanr(xs, ys).statistic)
    return rho if math.isfinite(rho) else None


def validate_proxies(
    candidates: Sequence[Candidate],
    scores: Mapping[str, Proxy],
    accuracy_drop: Callable[[Candidate], float],
) -> dict[str, Any]:
    """Spearman of each estimator's proxy with the measured accuracy drop over ``candidates``.

    Args:
        candidates: The candidates to measure (e.g. from :func:`random_candidates`).
        scores: ``{estimator name: additive score table or joint proxy}``.
        accuracy_drop: Measured drop of a candidate, in accuracy points (the caller caches).

    Returns:
        ``{"n", "spearman": {name: rho or None}, "points": [{"key", "acc_drop_pts", name: proxy, ...}]}``.
    """
    points = []
    for cand in candidates:
        point: dict[str, Any] = {"key": cand.key(), "acc_drop_pts": float(accuracy_drop(cand))}
        for name, table in scores.items():
            point[name] = candidate_proxy(table, cand)
        points.append(point)
    drops = [p["acc_drop_pts"] for p in points]
    rho = {name: spearman([p[name] for p in points], drops) for name in scores}
    for name, r in rho.items():
        log.info("proxy validation: spearman(%s, accuracy drop) = %s over %d candidates", name,
                 "n/a" if r is None else f"{r:.3f}", len(points))
    return {"n": len(points), "spearman": rho, "points": points}
