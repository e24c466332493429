"""Proxy validation: does a sensitivity proxy rank candidates like their measured accuracy drop?"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mpsearch.candidate import Bits, Candidate
from mpsearch.errors import ConfigError

log = logging.getLogger(__name__)

ScoreTable = Mapping[str, Mapping[Bits, float]]
#: An additive score table, or a joint proxy called on the whole candidate (e.g. a ``CandidateProxy``).
Proxy = ScoreTable | Callable[[Candidate], float]


SAMPLINGS = ("mix", "layer")


def random_candidates(layers: Sequence[str], pairs: Sequence[Bits], n: int, seed: int,
                      sampling: str = "mix") -> list[Candidate]:
    """``n`` distinct random candidates spread from mostly-wide to mostly-narrow bit-widths.

    ``sampling="mix"``: each candidate first draws its own mix of the pairs from a flat Dirichlet,
    then every layer draws its pair from that mix. ``"layer"``: every layer draws uniformly (what
    Optuna's random sampler and NSGA-II's first generation do); that puts nearly every candidate at
    the same average bit-width (22 layers average out), a much narrower range to rank.
    Stops early (with fewer candidates) when the space has fewer distinct ones.
    """
    if sampling not in SAMPLINGS:
        raise ConfigError(f"sampling {sampling!r} is unknown; use one of {', '.join(SAMPLINGS)}")
    if n < 0:
        raise ConfigError(f"the number of validation candidates must be >= 0, got {n}")
    if not layers or not pairs:
        raise ConfigError("need at least one layer and one bit pair to draw candidates from")
    rng = np.random.default_rng(seed)
    pairs = [tuple(p) for p in pairs]
    out: dict[Candidate, None] = {}
    for _ in range(50 * n):
        if len(out) >= n:
            break
        mix = rng.dirichlet(np.ones(len(pairs))) if sampling == "mix" else None
        picks = rng.choice(len(pairs), size=len(layers), p=mix)
        out.setdefault(Candidate({name: pairs[i] for name, i in zip(layers, picks)}), None)
    return list(out)


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
