"""Stage ``sensitivity``: the per-layer sensitivity the search's additive proxy is scored from, and the
joint (whole-candidate) proxy when the run asks for one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mpsearch.candidate import Bits
from mpsearch.quant.prepare import PreparedModel
from mpsearch.sensitivity import (
    ADDITIVE_FALLBACK, CandidateProxy, SensitivityResult, cached_estimate, first_samples, is_joint, make_estimator,
    make_joint_estimator, measure_skipped, score_table,
)

Batch = tuple[Any, torch.Tensor]


@dataclass
class Sensitivity:
    """What the ``sensitivity`` stage hands on.

    Attributes:
        batches: The first ``search.sensitivity_samples`` calibration samples, as one batch.
        result: The additive estimator's per-layer result (``sensitivity.json``).
        score: ``layer -> bit pair -> proxy``, the additive score the search, the ILP and the warm start use.
        joint: The joint proxy that is the search's objective, or None when the proxy is additive.
    """

    batches: list[Batch]
    result: SensitivityResult
    score: Mapping[str, Mapping[Bits, float]]
    joint: CandidateProxy | None


def sample_batch(data: list[Batch], n: int) -> list[Batch]:
    """The first ``n`` samples of ``data`` as one batch in the pipeline's ``(inputs, label)`` convention."""
    s = first_samples(data, n)
    return [(s.inputs[0] if len(s.inputs) == 1 else s.inputs, s.labels)]


def joint_proxy(name: str, prepared: PreparedModel, ranges: Mapping[str, tuple[float, float]], calib: list[Batch],
                samples: int, calib_samples: int, cache_dir: Path) -> CandidateProxy:
    """The joint estimator ``name`` on the calibration data, cached per candidate in the cache folder."""
    est = make_joint_estimator(name, prepared.graph_module, prepared.layer_names, calib, ranges,
                               samples=samples, calib_samples=calib_samples)
    return CandidateProxy(est, Path(cache_dir))


def estimate_sensitivity(estimator: str, prepared: PreparedModel, ranges: Mapping[str, tuple[float, float]],
                         calib: list[Batch], pairs: list[Bits], samples: int, calib_samples: int, seed: int,
                         cache_dir: Path) -> Sensitivity:
    """Run (or read from the cache) ``estimator`` on the first ``samples`` calibration samples.

    Args:
        estimator: ``search.sensitivity``; a joint one also builds its :class:`CandidateProxy`.
        samples: ``search.sensitivity_samples``.
        calib_samples: ``data.calib_samples`` (the joint estimators' data size).
    """
    sens_batches = sample_batch(calib, samples)
    # A joint (whole-candidate) proxy is the search's objective; the ILP and the warm start need an
    # additive score, which then comes from ADDITIVE_FALLBACK (hutchinson).
    joint = joint_proxy(estimator, prepared, ranges, calib, samples, calib_samples, cache_dir) \
        if is_joint(estimator) else None
    est = make_estimator(ADDITIVE_FALLBACK if joint else estimator, samples=samples, seed=seed, ranges=ranges,
                         pairs=pairs)
    model = prepared.graph_module
    result = cached_estimate(est, model, prepared.layer_names, sens_batches, Path(cache_dir))
    # a layer the estimator skipped for want of derivatives is measured instead of counting as free
    result = measure_skipped(result, model, ranges, pairs, sens_batches,
                             lambda e, layers: cached_estimate(e, model, layers, sens_batches, Path(cache_dir)))
    score = score_table(prepared.graph_module, result, ranges, pairs, sens_batches)
    return Sensitivity(sens_batches, result, score, joint)


def skipped_note(result: SensitivityResult, limit: int = 3) -> str | None:
    """The report's note on the layers ``result``'s estimator could not assess, and what scored them
    instead; None when it assessed every layer."""
    skipped = result.skipped()
    if not skipped:
        return None
    parts = []
    for measured in (True, False):
        names = [n for n in skipped if (result.layers[n].delta_loss is not None) == measured]
        if not names:
            continue
        reasons = sorted({skipped[n] for n in names})
        shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
        then = "their scores are measured loss changes instead (one forward pass per layer and bit pair)" \
            if measured else "they score 0 at every precision"
        parts.append(f"{len(names)} layer{'s' if len(names) > 1 else ''} ({shown}): {'; '.join(reasons)}; {then}")
    return f"The {result.estimator} sensitivity could not assess " + ". Also ".join(parts) + "."
