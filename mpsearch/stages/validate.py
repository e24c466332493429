"""Stage ``proxy validation``: how well each estimator's proxy ranks the real top-1 drop of random
candidates (``search.proxy_validation`` of them; 0 turns it off)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from mpsearch.candidate import Bits, Candidate
from mpsearch.config import SearchConfig
from mpsearch.quant.prepare import PreparedModel
from mpsearch.sensitivity import (
    SensitivityResult, cached_estimate, is_joint, make_estimator, random_candidates, score_table, validate_proxies,
)
from mpsearch.stages.accuracy import cached_accuracy
from mpsearch.stages.sensitivity import Batch, Sensitivity, joint_proxy


@dataclass
class ProxyValidation:
    """What the ``proxy validation`` stage hands on.

    Attributes:
        validation: Spearman correlations and points for the report, None when turned off.
        results: Every additive estimator's result, the search's own first (their signals go to the report).
    """

    validation: dict[str, Any] | None
    results: dict[str, SensitivityResult]


def validate_proxy(search_cfg: SearchConfig, prepared: PreparedModel, pairs: list[Bits],
                   ranges: Mapping[str, tuple[float, float]], sens: Sensitivity, calib: list[Batch],
                   test: list[Batch], calib_samples: int, cache_dir: Path) -> ProxyValidation:
    """Rank correlation of each estimator's proxy with the real top-1 drop of random candidates.

    Accuracies are cached like the evaluation's (same key recipe, so with the whole test split nothing
    is measured twice).

    Args:
        search_cfg: ``cfg.search`` (the estimators, the number of candidates and test samples, the seed).
        sens: The ``sensitivity`` stage's result; its estimator and joint proxy are not run again.
        calib_samples: ``data.calib_samples`` (the joint estimators' data size).
    """
    s, gm, layers = search_cfg, prepared.graph_module, prepared.layer_names
    results: dict[str, SensitivityResult] = {sens.result.estimator: sens.result}
    scores: dict[str, Any] = {sens.result.estimator: sens.score}
    joints = {sens.joint.name: sens.joint} if sens.joint is not None else {}
    if s.proxy_validation == 0:
        return ProxyValidation(None, results)
    for name in s.proxy_estimators:
        if is_joint(name):
            if name not in joints:
                joints[name] = joint_proxy(name, prepared, ranges, calib, s.sensitivity_samples, calib_samples,
                                           cache_dir)
        elif name not in results:
            est = make_estimator(name, samples=s.sensitivity_samples, seed=s.seed, ranges=ranges, pairs=pairs)
            results[name] = cached_estimate(est, gm, layers, sens.batches, Path(cache_dir))
            scores[name] = score_table(gm, results[name], ranges, pairs, sens.batches)
    data = test
    n_test = sum(len(y) for _, y in test)
    if s.proxy_validation_samples is not None and s.proxy_validation_samples < n_test:
        data, left = [], s.proxy_validation_samples
        for x, y in test:  # the first samples, in the test batches (every input of a tuple sliced alike)
            if left > 0:
                data.append((tuple(t[:left] for t in x) if isinstance(x, tuple) else x[:left], y[:left]))
                left -= len(data[-1][1])
        n_test = s.proxy_validation_samples
    accuracy = cached_accuracy(prepared, ranges, data, Path(cache_dir))
    base = accuracy(Candidate.uniform(layers, 32, 32))
    cands = random_candidates(layers, pairs, s.proxy_validation, s.seed)
    out = validate_proxies(cands, {**scores, **joints}, lambda c: 100.0 * (base - accuracy(c)))
    out["test_samples"] = n_test
    out["estimator_seconds"] = {name: round(r.seconds, 2) for name, r in results.items()}
    # joint proxies: wall time per candidate scored (None when every score came from the cache)
    out["joint_seconds_per_candidate"] = {
        name: None if p.mean_seconds() is None else round(p.mean_seconds(), 3) for name, p in joints.items()}
    return ProxyValidation(out, results)
