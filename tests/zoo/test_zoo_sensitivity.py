"""Every sensitivity estimator on every zoo architecture: each layer gets a finite, real estimate (none
skipped), and each joint estimator scores every layer's quantization. Hutchinson and the eigenvalue
estimator need second derivatives through hardswish/hardsigmoid (MobileNetV3) and attention; GPT-2's
``Conv1D`` layers take ``(batch * tokens, features)`` inputs and its labels are one token per position."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import pytest
import torch

from mpsearch.candidate import FLOAT_BITS, Candidate
from mpsearch.quant.calibration import calibrate
from mpsearch.quant.prepare import PreparedModel, prepare_model
from mpsearch.sensitivity import ESTIMATORS, JOINT_ESTIMATORS, make_estimator, make_joint_estimator, score_table
from tests.zoo.models import HAND_WRITTEN, ZOO

PAIRS = [(4, 8), (8, 8)]
SAMPLES = 4
# the deepest (53 and 37 layers): the eigenvalue estimator's power iteration takes 7-10 s there
SLOW = {("mobilenet_v2", "eigenvalue"), ("efficientnet", "eigenvalue")}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: the estimators' many small ops run ~10x faster on one thread than on a busy pool."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def _setup(name: str) -> tuple[PreparedModel, dict, list]:
    z = ZOO[name]
    prepared = prepare_model(z.build(), z.inputs)
    x = z.sample(8, seed=1)
    with torch.no_grad():
        labels = prepared.graph_module(*x).argmax(-1)  # a class per sample, or a token per position (GPT-2)
    ranges = calibrate(prepared.graph_module, prepared.layer_names, [(x, None)])
    return prepared, ranges, [(x, labels)]


def _zoo(name: str) -> tuple[PreparedModel, dict, list]:
    if name not in HAND_WRITTEN:
        pytest.importorskip("transformers")
    return _setup(name)


def _params(estimators: tuple[str, ...]) -> list:
    return [pytest.param(n, e, marks=[pytest.mark.slow] if (n, e) in SLOW else [])
            for n in ZOO for e in estimators]


@pytest.mark.parametrize(("name", "estimator"), _params(ESTIMATORS))
def test_every_estimator_estimates_every_layer(name: str, estimator: str) -> None:
    prepared, ranges, batches = _zoo(name)
    model, layers = prepared.graph_module, prepared.layer_names
    result = make_estimator(estimator, samples=SAMPLES, seed=0, ranges=ranges, pairs=PAIRS).estimate(
        model, layers, batches)
    assert list(result.layers) == layers and not result.skipped(), result.skipped()
    for s in result.layers.values():
        if s.delta_loss is None:  # curvature: a real coefficient for the weights and the input of each layer
            assert math.isfinite(s.weight_trace) and s.weight_trace != 0.0, s
            assert s.act_numel > 0 and math.isfinite(s.act_trace) and s.act_trace != 0.0, s
        else:  # measured at every pair (exactly 0 where the change saturates away, e.g. a hardsigmoid gate)
            assert set(s.delta_loss) == set(PAIRS) and all(map(math.isfinite, s.delta_loss.values())), s
    table = score_table(model, result, ranges, PAIRS, batches)
    assert all(math.isfinite(v) for row in table.values() for v in row.values())
    assert sum(table[n][(4, 8)] for n in layers) > 0


@pytest.mark.parametrize(("name", "estimator"), _params(JOINT_ESTIMATORS))
def test_every_joint_estimator_scores_every_layer(name: str, estimator: str) -> None:
    prepared, ranges, batches = _zoo(name)
    model, layers = prepared.graph_module, prepared.layer_names
    joint = make_joint_estimator(estimator, model, layers, batches, ranges, samples=SAMPLES)
    mixed = Candidate({n: PAIRS[i % 2] for i, n in enumerate(layers)})
    assert math.isfinite(joint.score(mixed))
    alone = {name_: joint.score(Candidate({n: (4, 8) if n == name_ else (FLOAT_BITS, FLOAT_BITS) for n in layers}))
             for name_ in layers}
    assert all(math.isfinite(v) for v in alone.values()), alone
    if estimator == "second_order":  # gᵀΔ + ½ΔᵀHΔ of each layer's own Δ: no layer is left out of the expansion
        assert all(v != 0.0 for v in alone.values()), alone
    else:  # measured KL from FP32: >= 0 up to float32 rounding (a tiny change can round to exactly 0)
        assert all(v >= -1e-6 for v in alone.values()) and sum(alone.values()) > 0, alone
