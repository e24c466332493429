"""Every estimator on the graph features of real models (tests/sensitivity/graph_models.py), the
label-free objectives, and the memory plan (sample count and passes)."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
from torch import nn

from mpsearch.candidate import Candidate
from mpsearch.sensitivity import (
    CalibKLEstimator, DeltaLossEstimator, EigenvalueEstimator, FisherEstimator, HutchinsonEstimator,
    SecondOrderEstimator, SensitivityResult, cache_key, cached_estimate, score_table,
)
from mpsearch.sensitivity import memory
from mpsearch.sensitivity.base import SensitivityError
from mpsearch.sensitivity.data import first_samples, with_objective
from mpsearch.sensitivity.memory import Footprint, measure_footprint, plan
from mpsearch.sensitivity.testing import check_estimator
from tests.sensitivity.graph_models import CASES, Case, batches, build, input_ranges

PAIRS = [(32, 32), (8, 8), (4, 8), (4, 4)]
CURVATURE = ("hutchinson", "eigenvalue", "fisher")
MAKERS = {
    "hutchinson": lambda r: HutchinsonEstimator(max_iters=2, min_iters=2, groups=8),  # a row per layer: PSD blocks alone
    "eigenvalue": lambda r: EigenvalueEstimator(max_iters=2),
    "fisher": lambda r: FisherEstimator(chunk=5),
    "delta_loss": lambda r: DeltaLossEstimator(r, PAIRS),
    "delta_kl": lambda r: DeltaLossEstimator(r, PAIRS, metric="kl"),
}


@pytest.mark.parametrize("estimator", list(MAKERS))
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_estimator_on_every_graph(case: Case, estimator: str):
    model = build(case)
    data = batches(case)
    ranges = input_ranges(model, case.layers, data)
    result = check_estimator(lambda: MAKERS[estimator](ranges), model, case.layers, data)
    expected = dict(case.skipped, **(case.skipped_by_gradient if estimator in CURVATURE else case.skipped_by_hooks))
    assert set(result.skipped()) == set(expected)
    for name, why in expected.items():
        assert why in result.layers[name].skipped
    live = [n for n in case.layers if n not in expected]
    assert all(result.layers[n].act_numel > 0 for n in live if n not in case.weight_only)
    for name in set(case.weight_only) & set(live):  # a weight term only
        s = result.layers[name]
        assert s.act_numel == 0 and s.act_trace == 0.0 and s.weight_trace != 0.0
    # the output layer matters on every objective: CE, KL and squared error are convex in the output,
    # so its weight block is PSD with a positive trace / top eigenvalue / Fisher, and a loss change > 0
    last = result.layers[case.layers[-1]]
    if estimator != "delta_loss":  # a measured loss change of an untrained model may be negative
        assert (last.delta_loss[(4, 4)] if last.delta_loss else last.weight_trace) > 0
    table = score_table(model, result, ranges, PAIRS, data)
    for name, row in table.items():
        assert all(math.isfinite(v) and v >= 0 for v in row.values()), name
        assert row[(32, 32)] == 0.0
        if name in expected:
            assert not any(row.values()), f"{name}: a skipped layer scores 0"


@pytest.mark.parametrize("estimator", CURVATURE)
def test_tied_weights_get_a_derivative_per_use(estimator: str):
    """A weight shared by two layers gives each layer its own use's curvature: the same numbers as the
    model with the weight copied into each layer (the additive score's per-layer view)."""
    case = next(c for c in CASES if c.name == "tied_weights")
    tied = build(case)
    untied = copy.deepcopy(tied)
    untied.dec.weight = nn.Parameter(tied.enc.weight.detach().clone())
    assert tied.dec.weight is tied.enc.weight and untied.dec.weight is not untied.enc.weight
    data = batches(case)
    a = MAKERS[estimator]({}).estimate(tied, case.layers, data)
    b = MAKERS[estimator]({}).estimate(untied, case.layers, data)
    for name in case.layers:
        assert a.layers[name].weight_trace == pytest.approx(b.layers[name].weight_trace, rel=1e-5, abs=1e-10)
        assert a.layers[name].act_trace == pytest.approx(b.layers[name].act_trace, rel=1e-5, abs=1e-10)
    # the module run twice has both calls' inputs
    assert a.layers["shared"].act_numel == 2 * a.layers["dec"].act_numel


def test_label_free_objectives():
    """No labels: KL to the FP32 predictions for (N, C) outputs, squared error to FP32 otherwise; class labels
    keep the cross-entropy; float labels shaped like the output are regression targets."""
    by_name = {c.name: c for c in CASES}
    emb = by_name["embedder_no_labels"]
    model = build(emb)
    s = with_objective(model, first_samples(batches(emb), None), 4, "test")
    assert s.objective == "mse" and s.target.shape == (12, 5, 6)
    mapping = by_name["mapping_output_no_labels"]
    s = with_objective(build(mapping), first_samples(batches(mapping), None), 4, "test")
    # float64 log-probabilities: the KL of near-equal predictions cancels in float32
    assert s.objective == "kl" and s.target.dtype == torch.float64
    assert torch.allclose(s.target.exp().sum(1), torch.ones(12, dtype=torch.float64))
    cls = by_name["unused_layer"]
    s = with_objective(build(cls), first_samples(batches(cls), None), 4, "test")
    assert s.objective == "ce" and s.target is s.labels
    reg = [(x, torch.zeros(len(x), 5, 6)) for x, _ in batches(emb)]
    s = with_objective(model, first_samples(reg, None), 4, "test")
    assert s.objective == "mse" and not s.target.any()
    # at the FP32 weights the label-free losses are 0 with zero gradient, so the Fisher needs drawn targets:
    fisher = FisherEstimator().estimate(model, emb.layers, batches(emb))
    assert all(s.weight_trace > 0 for s in fisher.layers.values())


def _mobile_data(n: int = 12):
    case = next(c for c in CASES if c.name == "mobile_block")
    return case, build(case), batches(case, n)


@pytest.mark.parametrize("make", [
    lambda: HutchinsonEstimator(max_iters=3, min_iters=3, auto_samples=False),
    lambda: EigenvalueEstimator(max_iters=3, auto_samples=False),
    lambda: FisherEstimator(auto_samples=False),
    lambda: DeltaLossEstimator({}, [(4, 32), (2, 32)], auto_samples=False),
], ids=["hutchinson", "eigenvalue", "fisher", "delta_loss"])
def test_passes_add_up_to_the_one_pass_estimate(make, monkeypatch):
    """With almost no memory every sample runs in its own pass; the result is the same (it is not in the key)."""
    case, model, data = _mobile_data()
    whole = make().estimate(model, case.layers, data)
    monkeypatch.setattr(memory, "available_bytes", lambda: 1)
    one_by_one = make().estimate(model, case.layers, data)
    assert one_by_one.samples == whole.samples == 12
    for name in case.layers:
        a, b = whole.layers[name], one_by_one.layers[name]
        assert b.weight_trace == pytest.approx(a.weight_trace, rel=1e-4, abs=1e-9), name
        assert b.act_trace == pytest.approx(a.act_trace, rel=1e-4, abs=1e-9), name
        assert b.act_numel == a.act_numel
        if a.delta_loss:
            for pair, v in a.delta_loss.items():
                assert b.delta_loss[pair] == pytest.approx(v, rel=1e-4, abs=1e-6)  # float32 sums differ


class _Wide(nn.Module):
    """Activations of ~128 KiB per 3x64x64 sample and layer: "large" next to a mocked memory."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


def test_sample_count_is_reduced_for_a_large_model(monkeypatch, caplog):
    torch.manual_seed(0)
    model = _Wide().eval()
    layers = ["conv1", "conv2", "fc"]
    data = [(torch.randn(128, 3, 64, 64), torch.randint(0, 3, (128,)))]
    footprint = measure_footprint(model, layers, first_samples(data, 2))
    assert footprint.layer_inputs == 4 * (3 * 64 * 64 + 32 * 64 * 64 + 32)
    assert footprint.saved >= 2 * 32 * 64 * 64 * 4  # at least the two conv outputs' ReLU inputs
    per_sample, _ = footprint.peak("hvp")
    # room for ~40 samples: the count drops to a power of two and runs in passes that fit
    monkeypatch.setattr(memory, "available_bytes", lambda: int((40 * per_sample + 6 * footprint.weights) / 0.5))
    with caplog.at_level(logging.INFO, logger="mpsearch.sensitivity.memory"):
        est = HutchinsonEstimator(batch_size=128).resolve(model, layers, data)
    assert est.batch_size == 32 and not est.auto_samples
    assert "32 samples in 1 pass of at most 32" in caplog.text and "MiB per sample" in caplog.text
    # the key names the count used; with plenty of memory it is the requested one
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**40)
    big = HutchinsonEstimator(batch_size=128).resolve(model, layers, data)
    assert big.batch_size == 128
    assert cache_key(est, model, layers, data) != cache_key(big, model, layers, data)
    # never below MIN_SAMPLES: then memory is bounded by passes instead
    p = plan("hutchinson", footprint, "hvp", 128, 128, True, available=int(3 * per_sample / 0.5))
    assert p.samples == memory.MIN_SAMPLES and p.per_pass < p.samples
    assert plan("hutchinson", footprint, "hvp", 128, 128, False, available=1).samples == 128


def test_peak_estimate_per_kind():
    f = Footprint(saved=100, layer_inputs=10, weights=1000)
    assert f.peak("hvp") == (551, 6000)
    assert f.peak("hvp", rows=2)[0] == 2 * 550 + 1
    assert f.peak("eigen", rows=3) == (3 * (500 + 45) + 1, 18000)
    assert f.peak("fisher") == (2426, 2000)
    assert f.peak("forward") == (111, 1000)


class _Once(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.save_for_backward(x)
        return x.tanh()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * (1 - x.tanh() ** 2)


class _NoDoubleBackward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(_Once.apply(self.a(x)))


def test_no_second_derivative_is_a_skipped_layer_or_one_line():
    torch.manual_seed(0)
    model = _NoDoubleBackward().eval()
    data = [(torch.randn(6, 4), torch.randint(0, 3, (6,)))]
    result = HutchinsonEstimator(max_iters=1, min_iters=1).estimate(model, ["a", "b"], data)
    assert "no second derivative" in result.layers["a"].skipped and result.layers["b"].skipped is None
    assert result.layers["b"].weight_trace > 0
    # torch.func cannot run the Function at all (no setup_context): one line, not a traceback
    with pytest.raises(SensitivityError, match="^eigenvalue: cannot differentiate this model .*delta_kl") as e:
        EigenvalueEstimator(max_iters=2).estimate(model, ["a", "b"], data)
    assert "\n" not in str(e.value)


def test_results_with_skipped_layers_round_trip():
    case = next(c for c in CASES if c.name == "unused_layer")
    result = FisherEstimator().estimate(build(case), case.layers, batches(case))
    assert list(result.skipped()) == ["spare"] and result.skipped()["spare"].startswith("not called by forward()")
    assert SensitivityResult.from_json(result.to_json()) == result
    # results without skipped layers keep their JSON (no "skipped" key)
    assert '"skipped"' not in FisherEstimator().estimate(build(case), ["conv", "fc"], batches(case)).to_json()


@pytest.mark.parametrize("name", ["unused_layer", "tied_weights", "two_inputs", "sdpa_encoder",
                                  "mobile_block", "embedder_no_labels", "mapping_output_no_labels"])
def test_joint_estimators_on_any_graph(name: str):
    """The whole-candidate proxies run on the same graphs: zero at FP32, finite and >= 0 to second order
    for a 4-bit candidate where the FP32 point is a minimum of the objective (label-free data)."""
    case = next(c for c in CASES if c.name == name)
    model = build(case)
    data = batches(case)
    ranges = input_ranges(model, case.layers, data)
    live = [n for n in case.layers if n not in case.skipped]
    cand = Candidate({n: (4, 8) if n in live else (32, 32) for n in case.layers})
    for joint in (SecondOrderEstimator(model, case.layers, data, ranges, batch_size=12),
                  CalibKLEstimator(model, case.layers, data, ranges, batch_size=12)):
        assert joint.score(Candidate.uniform(case.layers, 32, 32)) == 0.0
        value = joint.score(cand)
        assert math.isfinite(value)
        if joint.name == "calib_kl" or case.data(1, torch.Generator())[1] is None:
            assert value > 0, joint.name


@pytest.mark.parametrize("name", ["two_inputs", "embedder_no_labels"])
def test_cache_keys_several_inputs_and_no_labels(name: str, tmp_path):
    case = next(c for c in CASES if c.name == name)
    model = build(case)
    data = batches(case)
    first = cached_estimate(FisherEstimator(), model, case.layers, data, tmp_path)
    assert cached_estimate(FisherEstimator(), model, case.layers, data, tmp_path) == first
    assert len(list((tmp_path / "sensitivity").iterdir())) == 1
    other = batches(case, seed=1)
    assert cache_key(FisherEstimator(), model, case.layers, other) != cache_key(FisherEstimator(), model,
                                                                               case.layers, data)


def test_a_layer_without_second_derivatives_is_measured_not_free(tmp_path, caplog):
    """The sensitivity stage measures the loss change of a layer its estimator skipped for want of
    derivatives (here Hutchinson on ``a``, before an op with no double backward): its score at 4 bits
    is that measurement (> 0, the same delta_loss measures it alone), not 0, and the report's note says
    so; the unused layer of another graph still scores 0 (quantizing it changes nothing)."""
    from types import SimpleNamespace

    from mpsearch.quant.calibration import calibrate
    from mpsearch.stages.sensitivity import estimate_sensitivity, skipped_note

    torch.manual_seed(0)
    data = [(torch.randn(64, 4), torch.randint(0, 3, (64,)))]
    layers = ["a", "b"]
    prepared = SimpleNamespace(graph_module=_NoDoubleBackward().eval(), layer_names=layers)  # what the stage reads
    ranges = calibrate(prepared.graph_module, layers, data)
    pairs = [(32, 32), (8, 8), (4, 8)]
    with caplog.at_level(logging.WARNING):
        sens = estimate_sensitivity("hutchinson", prepared, ranges, data, pairs, 64, 64, 0, tmp_path)
    a, b = layers
    assert "no second derivative" in sens.result.layers[a].skipped and sens.result.layers[b].skipped is None
    alone = DeltaLossEstimator(ranges, pairs, batch_size=64).estimate(prepared.graph_module, [a], data)
    assert sens.score[a][(4, 8)] == pytest.approx(max(alone.layers[a].delta_loss[(4, 8)], 0.0))
    assert sens.score[a][(4, 8)] > 0 and sens.score[a][(32, 32)] == 0
    assert "scored by its measured loss change" in caplog.text
    note = skipped_note(sens.result)
    assert note is not None and a in note and "measured loss changes instead" in note
    # the merged result round-trips (sensitivity.json) with both the reason and the measurement
    assert SensitivityResult.from_json(sens.result.to_json()) == sens.result
    # the cached run gives the same scores
    again = estimate_sensitivity("hutchinson", prepared, ranges, data, pairs, 64, 64, 0, tmp_path)
    assert again.score == sens.score

    case = next(c for c in CASES if c.name == "unused_layer")
    unused = SimpleNamespace(graph_module=build(case), layer_names=case.layers)
    r = input_ranges(unused.graph_module, case.layers, batches(case))
    s = estimate_sensitivity("fisher", unused, r, batches(case), pairs, 12, 12, 0, tmp_path)
    assert s.score["spare"] == {p: 0.0 for p in pairs} and "score 0" in skipped_note(s.result)
