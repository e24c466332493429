from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mpsearch.errors import ConfigError
from mpsearch.quant.prepare import prepare_model
from mpsearch.sensitivity import HutchinsonEstimator
from mpsearch.sensitivity.testing import check_estimator


def test_conformance(tiny_prepared, tiny_batches):
    gm = tiny_prepared.graph_module
    result = check_estimator(lambda: HutchinsonEstimator(max_iters=8, min_iters=8),
                             gm, tiny_prepared.layer_names, tiny_batches)
    assert result.estimator == "hutchinson"
    assert result.iterations == 8
    # batch_size=128 > 64 available samples: all 64 are used
    assert result.layers["conv2"].act_numel == 64 * 4 * 8 * 8
    # CE is convex in the logits, so the last layer's weight and input Hessians are PSD
    assert result.layers["fc"].weight_trace > 0
    assert result.layers["fc"].act_trace > 0


def test_seed_changes_estimate_and_first_samples_are_used(tiny_prepared, tiny_batches):
    gm, layers = tiny_prepared.graph_module, tiny_prepared.layer_names
    a = HutchinsonEstimator(max_iters=4, min_iters=4, batch_size=40).estimate(gm, layers, tiny_batches)
    x = torch.cat([b[0] for b in tiny_batches])[:40]
    y = torch.cat([b[1] for b in tiny_batches])[:40]
    b = HutchinsonEstimator(max_iters=4, min_iters=4, batch_size=40).estimate(gm, layers, [(x, y)])
    c = HutchinsonEstimator(max_iters=4, min_iters=4, batch_size=40, seed=1).estimate(gm, layers, [(x, y)])
    assert a.layers["conv1"].act_numel == 40 * 64
    for name in layers:
        assert math.isclose(a.layers[name].weight_trace, b.layers[name].weight_trace, rel_tol=1e-5)
    assert a.layers["conv1"].weight_trace != c.layers["conv1"].weight_trace


def _exact_mean_diag(f, at: torch.Tensor) -> float:
    h = torch.autograd.functional.hessian(f, at)
    return float(torch.diagonal(h.reshape(at.numel(), -1)).mean())


@pytest.mark.parametrize("groups", [1, 2])
def test_matches_exact_traces_of_two_layer_mlp(groups):
    torch.manual_seed(0)
    prepared = prepare_model(nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)), (1, 5))
    gm = prepared.graph_module
    assert prepared.layer_names == ["0", "2"]
    x, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    w1, b1 = gm.get_submodule("0").weight.detach(), gm.get_submodule("0").bias.detach()
    w2, b2 = gm.get_submodule("2").weight.detach(), gm.get_submodule("2").bias.detach()
    h = F.relu(F.linear(x, w1, b1))

    exact = {
        ("0", "w"): _exact_mean_diag(lambda w: F.cross_entropy(F.linear(F.relu(F.linear(x, w, b1)), w2, b2), y), w1),
        ("0", "x"): _exact_mean_diag(lambda z: F.cross_entropy(F.linear(F.relu(F.linear(z, w1, b1)), w2, b2), y), x),
        ("2", "w"): _exact_mean_diag(lambda w: F.cross_entropy(F.linear(h, w, b2), y), w2),
        ("2", "x"): _exact_mean_diag(lambda z: F.cross_entropy(F.linear(z, w2, b2), y), h),
    }
    est = HutchinsonEstimator(max_iters=250, min_iters=250, tol=0.0, groups=groups)
    result = est.estimate(gm, prepared.layer_names, [(x, y)])
    assert result.layers["0"].act_numel == 12 * 5 and result.layers["2"].act_numel == 12 * 4
    for (name, kind), value in exact.items():
        s = result.layers[name]
        got = s.weight_trace if kind == "w" else s.act_trace
        assert abs(got - value) / abs(value) < 0.15, f"{name} {kind}: {got} vs exact {value}"


def test_early_stop_on_tolerance(tiny_prepared, tiny_batches):
    est = HutchinsonEstimator(max_iters=50, min_iters=3, tol=10.0)
    result = est.estimate(tiny_prepared.graph_module, tiny_prepared.layer_names, tiny_batches)
    assert result.iterations == 3


@pytest.mark.parametrize("kwargs", [
    {"max_iters": 4, "min_iters": 8}, {"min_iters": 0}, {"tol": -1.0}, {"batch_size": 0}, {"groups": 0},
])
def test_bad_config(kwargs):
    with pytest.raises(ConfigError):
        HutchinsonEstimator(**kwargs)


def test_bad_inputs(tiny_prepared, tiny_batches):
    gm = tiny_prepared.graph_module
    est = HutchinsonEstimator(max_iters=1, min_iters=1)
    with pytest.raises(ConfigError, match="unknown layer"):
        est.estimate(gm, ["nope"], tiny_batches)
    with_pool = copy.deepcopy(gm)  # the exported graph has no pooling module: add one to name
    with_pool.pool = nn.AdaptiveAvgPool2d(1)
    with pytest.raises(ConfigError, match="without a weight tensor"):
        est.estimate(with_pool, ["pool"], tiny_batches)
    with pytest.raises(ConfigError, match="empty"):
        est.estimate(gm, ["fc"], [])
    with pytest.raises(ConfigError):
        est.estimate(gm, [], tiny_batches)
