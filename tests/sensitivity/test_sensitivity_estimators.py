from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mpsearch.candidate import Candidate
from mpsearch.config import SENSITIVITIES
from mpsearch.errors import ConfigError
from mpsearch.quant.calibration import calibrate
from mpsearch.quant.fake import quantize_
from mpsearch.quant.prepare import prepare_model
from mpsearch.sensitivity import (
    ESTIMATORS, DeltaLossEstimator, EigenvalueEstimator, FisherEstimator, HutchinsonEstimator, SensitivityResult,
    make_estimator, score_table, signals,
)
from mpsearch.sensitivity.testing import check_estimator

PAIRS = [(32, 32), (8, 8), (4, 8), (4, 4), (2, 4)]


@pytest.fixture(scope="module")
def ranges(tiny_prepared, tiny_batches):
    return calibrate(tiny_prepared.graph_module, tiny_prepared.layer_names, tiny_batches)


@pytest.fixture(scope="module")
def mlp():
    """A two-layer MLP with exact Hessians and per-sample gradients computable by brute force."""
    torch.manual_seed(0)
    prepared = prepare_model(nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)), (1, 5))
    x, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    return prepared, x, y


def _mlp_losses(prepared, x, y):
    """Loss as a function of each block alone (the others at their values)."""
    gm = prepared.graph_module
    w1, b1 = gm.get_submodule("0").weight.detach(), gm.get_submodule("0").bias.detach()
    w2, b2 = gm.get_submodule("2").weight.detach(), gm.get_submodule("2").bias.detach()
    h = F.relu(F.linear(x, w1, b1))
    return {
        ("0", "w"): (lambda w: F.cross_entropy(F.linear(F.relu(F.linear(x, w, b1)), w2, b2), y), w1),
        ("0", "x"): (lambda z: F.cross_entropy(F.linear(F.relu(F.linear(z, w1, b1)), w2, b2), y), x),
        ("2", "w"): (lambda w: F.cross_entropy(F.linear(h, w, b2), y), w2),
        ("2", "x"): (lambda z: F.cross_entropy(F.linear(z, w2, b2), y), h),
    }


def test_names_match_config():
    assert ESTIMATORS == SENSITIVITIES


@pytest.mark.parametrize("make", [
    lambda r: EigenvalueEstimator(max_iters=3),
    lambda r: FisherEstimator(chunk=20),
    lambda r: DeltaLossEstimator(r, PAIRS),
    lambda r: DeltaLossEstimator(r, PAIRS, metric="kl"),
], ids=["eigenvalue", "fisher", "delta_loss", "delta_kl"])
def test_conformance(make, ranges, tiny_prepared, tiny_batches):
    result = check_estimator(lambda: make(ranges), tiny_prepared.graph_module, tiny_prepared.layer_names,
                             tiny_batches)
    assert result.seconds > 0
    # the last layer's blocks are PSD (CE is convex in the logits): a positive curvature or loss increase
    fc = result.layers["fc"]
    assert (fc.delta_loss[(2, 4)] if fc.delta_loss else fc.weight_trace) > 0


def test_eigenvalue_matches_exact_top_eigenvalue(mlp):
    prepared, x, y = mlp
    result = EigenvalueEstimator(max_iters=60, tol=1e-5).estimate(prepared.graph_module, ["0", "2"], [(x, y)])
    for (name, kind), (f, at) in _mlp_losses(prepared, x, y).items():
        h = torch.autograd.functional.hessian(f, at).reshape(at.numel(), at.numel())
        eig = torch.linalg.eigvalsh(h.double())
        top = float(eig[eig.abs().argmax()])
        s = result.layers[name]
        got = s.weight_trace if kind == "w" else s.act_trace
        assert got == pytest.approx(top, rel=0.02), f"{name} {kind}"


def test_fisher_matches_per_sample_gradients(mlp):
    prepared, x, y = mlp
    result = FisherEstimator(chunk=5).estimate(prepared.graph_module, ["0", "2"], [(x, y)])
    n = len(x)
    for (name, kind), (f, at) in _mlp_losses(prepared, x, y).items():
        if kind == "w":
            grads = [torch.autograd.functional.jacobian(
                lambda w, i=i: F.cross_entropy(_sample_model(prepared, w, name, x[i:i + 1]), y[i:i + 1]), at)
                for i in range(n)]
            expected = float(torch.stack(grads).pow(2).mean())
            assert result.layers[name].weight_trace == pytest.approx(expected, rel=1e-4)
        else:
            g = torch.autograd.functional.jacobian(lambda z: f(z) * n, at)  # row i: grad of sample i's loss
            expected = float(g.pow(2).mean()) / n
            assert result.layers[name].act_trace == pytest.approx(expected, rel=1e-4)
            assert result.layers[name].act_numel == at.numel()


def _sample_model(prepared, w, name, xi):
    gm = prepared.graph_module
    w1, b1 = gm.get_submodule("0").weight.detach(), gm.get_submodule("0").bias.detach()
    w2, b2 = gm.get_submodule("2").weight.detach(), gm.get_submodule("2").bias.detach()
    if name == "0":
        w1 = w
    else:
        w2 = w
    return F.linear(F.relu(F.linear(xi, w1, b1)), w2, b2)


@pytest.mark.parametrize("corrected", [False, True])
def test_delta_loss_is_the_measured_loss_change(ranges, tiny_prepared, tiny_corrected, tiny_batches, corrected):
    if corrected:  # bias correction: the measured change is the corrected layer's
        tiny_prepared, ranges = tiny_corrected
    gm, layers = tiny_prepared.graph_module, tiny_prepared.layer_names
    result = DeltaLossEstimator(ranges, PAIRS).estimate(gm, layers, tiny_batches)
    x = torch.cat([b[0] for b in tiny_batches])
    y = torch.cat([b[1] for b in tiny_batches])
    with torch.no_grad():
        base = float(F.cross_entropy(gm(x), y))
        for name in ("conv1", "fc"):
            cand = Candidate({name: (4, 4)})
            quant = float(F.cross_entropy(quantize_(tiny_prepared.copy_module(), cand, ranges)(x), y))
            assert result.layers[name].delta_loss[(4, 4)] == pytest.approx(quant - base, abs=1e-5)
    assert (32, 32) not in result.layers["fc"].delta_loss
    table = score_table(gm, result, ranges, PAIRS, tiny_batches)
    for name in layers:
        assert table[name][(32, 32)] == 0.0
        assert table[name][(2, 4)] == pytest.approx(max(result.layers[name].delta_loss[(2, 4)], 0.0))
    with pytest.raises(ConfigError, match="no measured loss change at W3A8"):
        score_table(gm, result, ranges, [(3, 8)], tiny_batches)
    assert SensitivityResult.from_json(result.to_json()) == result
    sig = signals(result)
    assert set(sig) == {"delta_loss_W8A8", "delta_loss_W4A8", "delta_loss_W4A4", "delta_loss_W2A4"}
    assert sig["delta_loss_W2A4"]["fc"] == result.layers["fc"].delta_loss[(2, 4)]


def test_delta_kl_is_the_measured_divergence_from_fp32(ranges, tiny_prepared, tiny_batches):
    gm, layers = tiny_prepared.graph_module, tiny_prepared.layer_names
    est = DeltaLossEstimator(ranges, PAIRS, metric="kl")
    result = est.estimate(gm, layers, tiny_batches)
    assert result.estimator == "delta_kl" == est.name
    x = torch.cat([b[0] for b in tiny_batches])
    with torch.no_grad():
        ref = F.log_softmax(gm(x), 1)
        for name in layers:
            out = F.log_softmax(quantize_(tiny_prepared.copy_module(), Candidate({name: (2, 4)}), ranges)(x), 1)
            kl = float((ref.exp() * (ref - out)).sum(1).mean())
            assert result.layers[name].delta_loss[(2, 4)] == pytest.approx(kl, rel=1e-4, abs=1e-7)
            assert 0 < result.layers[name].delta_loss[(8, 8)] < result.layers[name].delta_loss[(2, 4)]
    assert set(signals(result)) == {"delta_kl_W8A8", "delta_kl_W4A8", "delta_kl_W4A4", "delta_kl_W2A4"}
    # its own cache key; delta_loss keeps the key it had before the metric existed
    assert est.config_key() != DeltaLossEstimator(ranges, PAIRS).config_key()
    assert "metric" not in DeltaLossEstimator(ranges, PAIRS).config_key()
    with pytest.raises(ConfigError, match="metric 'mse' is unknown"):
        DeltaLossEstimator(ranges, PAIRS, metric="mse")


def test_delta_loss_cache_key_depends_on_ranges_and_pairs(ranges):
    key = DeltaLossEstimator(ranges, PAIRS).config_key()
    assert DeltaLossEstimator(dict(ranges), list(PAIRS)).config_key() == key
    moved = dict(ranges, fc=(ranges["fc"][0], ranges["fc"][1] * 2))
    assert DeltaLossEstimator(moved, PAIRS).config_key() != key
    assert DeltaLossEstimator(ranges, PAIRS[:-1]).config_key() != key
    with pytest.raises(ConfigError, match="no calibrated activation range"):
        DeltaLossEstimator({}, PAIRS).estimate(torch.nn.Sequential(torch.nn.Linear(2, 2)), ["0"],
                                               [(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))])


def test_registry_and_signals(ranges):
    for name in ESTIMATORS:
        est = make_estimator(name, samples=64, seed=3, ranges=ranges, pairs=PAIRS)
        assert est.name == name
    assert make_estimator("hutchinson", samples=64, seed=3, ranges={}, pairs=[]).config_key()["seed"] == 3
    with pytest.raises(ConfigError, match="unknown sensitivity estimator 'hessian'; use one of"):
        make_estimator("hessian", samples=64, seed=0, ranges={}, pairs=[])
    fake = SensitivityResult("hutchinson", {})
    assert set(signals(fake)) == {"hessian_trace", "activation_trace"}


@pytest.mark.parametrize("kwargs", [{"max_iters": 1}, {"tol": -1.0}, {"batch_size": 0}, {"chunk": 0}])
def test_eigenvalue_bad_config(kwargs):
    with pytest.raises(ConfigError):
        EigenvalueEstimator(**kwargs)


def test_curvature_estimators_agree_on_the_ranking(tiny_prepared, tiny_batches):
    """Trace, Fisher and top eigenvalue see the same most-sensitive weight block on the tiny CNN."""
    gm, layers = tiny_prepared.graph_module, tiny_prepared.layer_names
    results = [HutchinsonEstimator(max_iters=4, min_iters=4).estimate(gm, layers, tiny_batches),
               FisherEstimator().estimate(gm, layers, tiny_batches),
               EigenvalueEstimator(max_iters=4).estimate(gm, layers, tiny_batches)]
    for r in results:
        assert max(layers, key=lambda n: r.layers[n].weight_trace) == "fc", r.estimator
        assert all(math.isfinite(s.act_trace) for s in r.layers.values())
