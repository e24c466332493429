"""Conformance checks every :class:`SensitivityEstimator` must pass (call them from a test)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from mpsearch.sensitivity.base import Batch, SensitivityEstimator, SensitivityResult


def check_estimator(
    make: Callable[[], SensitivityEstimator], model: nn.Module, layers: Sequence[str], batches: Sequence[Batch]
) -> SensitivityResult:
    """Check the contract on ``model``; return the first result for further checks.

    Checks: layers in the given order with positive sizes and finite traces, JSON round trip,
    the model's weights and training flag untouched, and a second estimator built the same way
    gives the same traces. A skipped layer has a one-line reason, zero coefficients and a zero score.
    ``batches`` may hold several inputs per batch and no labels (:mod:`mpsearch.sensitivity.data`).
    """
    layers = list(layers)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    training = model.training
    first = make().estimate(model, layers, batches)
    assert list(first.layers) == layers, "result must list the layers in the order given"
    for name, s in first.layers.items():
        assert s.name == name
        assert math.isfinite(s.weight_trace) and math.isfinite(s.act_trace), f"{name}: non-finite trace"
        assert s.weight_numel == model.get_submodule(name).weight.numel(), f"{name}: wrong weight_numel"
        if s.skipped is not None:
            assert s.skipped.strip() and "\n" not in s.skipped, f"{name}: the reason must be one line"
            assert s.weight_trace == s.act_trace == 0.0, f"{name}: a skipped layer has zero coefficients"
            assert not any((s.delta_loss or {}).values()), f"{name}: a skipped layer measures no change"
            continue
        assert s.act_numel > 0 or s.act_trace == 0.0, f"{name}: an activation term needs a positive act_numel"
        if s.delta_loss is not None:
            assert all(math.isfinite(v) for v in s.delta_loss.values()), f"{name}: non-finite loss change"
    assert first.iterations >= 1 and first.seconds >= 0
    assert first.estimator == make().name
    assert SensitivityResult.from_json(first.to_json()) == first, "JSON round trip changed the result"
    assert model.training == training, "estimate() must restore the training flag"
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "estimate() must not change the model"
    second = make().estimate(model, layers, batches)
    for name in layers:
        a, b = first.layers[name], second.layers[name]
        assert math.isclose(a.weight_trace, b.weight_trace, rel_tol=1e-5, abs_tol=1e-12), f"{name}: not deterministic"
        assert math.isclose(a.act_trace, b.act_trace, rel_tol=1e-5, abs_tol=1e-12), f"{name}: not deterministic"
    return first
