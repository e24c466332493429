"""Joint (whole-candidate) proxies: second-order Taylor with cross-layer terms, measured calibration KL."""

from __future__ import annotations

import copy
import math

import optuna
import pytest
import torch
from torch.nn import functional as F

from mpsearch.candidate import Candidate
from mpsearch.config import validate
from mpsearch.errors import ConfigError
from mpsearch.pipeline import batches, build_model, load_data, run
from mpsearch.quant.calibration import calibrate, calibrate_for
from mpsearch.quant.fake import quantize_
from mpsearch.quant.prepare import prepare_model
from mpsearch.sensitivity import (
    ADDITIVE_FALLBACK, CalibKLEstimator, CandidateProxy, SecondOrderEstimator, make_estimator,
    make_joint_estimator, validate_proxies,
)
from mpsearch.testing import TableBackend, tiny_run_config


@pytest.fixture(scope="module")
def setup(tiny_prepared, tiny_batches):
    gm, layers = tiny_prepared.graph_module, tiny_prepared.layer_names
    ranges = calibrate(gm, layers, tiny_batches, "minmax", 99.99, 8)
    return gm, layers, tiny_batches, ranges


def _measured_loss_change(gm, cand, ranges, x, y) -> float:
    with torch.no_grad():
        q = quantize_(copy.deepcopy(gm), cand, ranges).eval()
        return float(F.cross_entropy(q(x), y) - F.cross_entropy(gm(x), y))


def _only(layers, quantized, pair):
    return Candidate({n: pair if n in quantized else (32, 32) for n in layers})


def test_second_order_predicts_the_measured_loss_change(setup):
    gm, layers, data, ranges = setup
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    est = SecondOrderEstimator(gm, layers, data, ranges, batch_size=len(x))
    for w in (8, 6):  # small weight perturbations: the Taylor expansion in Δ, checked against the real model
        cand = Candidate.uniform(layers, w, 32)
        measured, predicted = _measured_loss_change(gm, cand, ranges, x, y), est.score(cand)
        assert math.isclose(predicted, measured, rel_tol=0.25, abs_tol=1e-4), (w, predicted, measured)
    assert est.score(Candidate.uniform(layers, 32, 32)) == 0.0
    assert est.score(Candidate.uniform(layers, 4, 4)) == est.score(Candidate.uniform(layers, 4, 4))


def test_second_order_includes_cross_layer_terms(setup):
    gm, layers, data, ranges = setup
    est = SecondOrderEstimator(gm, layers, data, ranges, batch_size=64, first_order=False)
    a, b = layers[0], layers[1]
    qa, qb = est.score(_only(layers, {a}, (4, 4))), est.score(_only(layers, {b}, (4, 4)))
    both = est.score(_only(layers, {a, b}, (4, 4)))
    # ½(Δa+Δb)ᵀH(Δa+Δb) = ½ΔaᵀHΔa + ½ΔbᵀHΔb + ΔaᵀHΔb: the joint score is not the sum of the layers'
    cross = both - qa - qb
    assert abs(cross) > 0.05 * (abs(qa) + abs(qb)), (qa, qb, both)
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in gm.state_dict().items())


def test_calib_kl_measures_the_fake_quant_model(setup):
    gm, layers, data, ranges = setup
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    kl = CalibKLEstimator(gm, layers, data, ranges, batch_size=len(x))
    loss = CalibKLEstimator(gm, layers, data, ranges, batch_size=len(x), metric="loss", chunk=24)
    w8, w4, w2 = (Candidate.uniform(layers, w, w) for w in (8, 4, 2))
    assert kl.score(Candidate.uniform(layers, 32, 32)) == 0.0
    assert 0 < kl.score(w8) < kl.score(w4) < kl.score(w2)
    for cand in (w4, w2, _only(layers, {layers[0]}, (4, 8))):
        assert math.isclose(loss.score(cand), _measured_loss_change(gm, cand, ranges, x, y), rel_tol=1e-4,
                            abs_tol=1e-6)
    # scoring leaves the model alone, in any order
    assert kl.score(w8) == kl.score(w8)
    assert all(torch.equal(before[k], v) for k, v in gm.state_dict().items())
    assert not any("QuantLayer" in type(m).__name__ for m in gm.modules())
    with pytest.raises(ConfigError, match="metric"):
        CalibKLEstimator(gm, layers, data, ranges, metric="mse")


def test_candidate_proxy_caches_by_content(setup, tmp_path):
    gm, layers, data, ranges = setup
    cand = Candidate.uniform(layers, 4, 8)
    first = CandidateProxy(CalibKLEstimator(gm, layers, data, ranges, batch_size=32), tmp_path)
    value = first(cand)
    assert first(cand) == value and first.computed == 1 and first.seconds > 0
    again = CandidateProxy(CalibKLEstimator(gm, layers, data, ranges, batch_size=32), tmp_path)
    assert again(cand) == value and again.computed == 0 and again.mean_seconds() is None
    # other data, other settings or other weights: another key, recomputed
    other = CandidateProxy(CalibKLEstimator(gm, layers, data, ranges, batch_size=16), tmp_path)
    assert other(cand) != value and other.computed == 1
    changed = copy.deepcopy(gm)
    with torch.no_grad():
        changed.get_submodule(layers[0]).weight.mul_(1.5)
    moved = CandidateProxy(CalibKLEstimator(changed, layers, data, ranges, batch_size=32), tmp_path)
    assert moved(cand) != value and moved.computed == 1
    # a half-written line (killed run) is dropped and recomputed
    with open(tmp_path / "joint_proxy.jsonl", "a") as f:
        f.write('{"key": "trunc')
    assert CandidateProxy(CalibKLEstimator(gm, layers, data, ranges, batch_size=32), tmp_path)(cand) == value


def test_joint_proxies_in_the_registry_and_validation(setup):
    gm, layers, data, ranges = setup
    for name in ("second_order", "calib_kl"):
        est = make_joint_estimator(name, gm, layers, data, ranges, samples=32, calib_samples=48)
        assert est.name == name and est.batch_size == (32 if name == "second_order" else 48)
        with pytest.raises(ConfigError, match="whole candidates"):
            make_estimator(name, samples=32, seed=0, ranges=ranges, pairs=[(8, 8)])
    with pytest.raises(ConfigError, match="unknown joint"):
        make_joint_estimator("bogus", gm, layers, data, ranges, samples=8)
    proxy = CandidateProxy(CalibKLEstimator(gm, layers, data, ranges, batch_size=32), None)
    cands = [Candidate.uniform(layers, w, a) for w, a in ((8, 8), (4, 8), (4, 4), (2, 2))]
    out = validate_proxies(cands, {"calib_kl": proxy}, lambda c: proxy(c) * 10)
    assert out["spearman"]["calib_kl"] == pytest.approx(1.0)
    assert [p["calib_kl"] for p in out["points"]] == [proxy(c) for c in cands]


def test_joint_proxy_needs_one_search_process(tmp_path):
    cfg = tiny_run_config(tmp_path, search__sensitivity="calib_kl", search__workers=2)
    with pytest.raises(ConfigError, match="search.workers=1"):
        validate(cfg)
    with pytest.raises(ConfigError, match="unknown"):
        validate(tiny_run_config(tmp_path, search__proxy_estimators=["calib_kld"]))


def test_search_minimises_the_joint_proxy_with_the_ilp_warm_start(tmp_path):
    cfg = tiny_run_config(tmp_path, search__sensitivity="calib_kl", search__n_trials=20,
                          search__proxy_validation=4, search__proxy_estimators=["hutchinson"])
    out = run(cfg, lambda p, c, progress: TableBackend(p, c, progress))
    study = optuna.load_study(study_name="mpsearch", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out.run_dir / "study.journal"))))
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 20
    # the first objective is the candidate's measured calibration KL, not the additive score
    prepared = prepare_model(build_model(cfg), tuple(cfg.model.input_shape))
    calib = batches(load_data(cfg, "calib", cfg.data.calib_samples), cfg.data.batch_size)
    ranges = calibrate_for(prepared.graph_module, prepared.layer_names, calib, cfg.search)
    kl = CalibKLEstimator(prepared.graph_module, prepared.layer_names, calib, ranges,
                          batch_size=cfg.data.calib_samples)
    for t in trials[-3:]:
        cand = Candidate({n: tuple(int(v) for v in t.params[n][1:].split("A")) for n in prepared.layer_names})
        assert t.values[0] == pytest.approx(kl.score(cand), rel=1e-5, abs=1e-9)
    # the additive score (hutchinson's) still drives the ILP warm start: the 5 uniform candidates, then ILP picks
    enqueued = [t for t in trials if "fixed_params" in t.system_attrs]
    assert len(enqueued) > 5
    assert out.summary.sensitivity and any(k.startswith("hessian") for k in out.summary.sensitivity)
    assert f"use {ADDITIVE_FALLBACK}'s additive score" in " ".join(out.summary.notes)
    pv = out.summary.proxy_validation
    assert set(pv["spearman"]) == {"hutchinson", "calib_kl"}
    assert pv["joint_seconds_per_candidate"]["calib_kl"] is not None
    assert all(p["calib_kl"] >= 0 for p in pv["points"])
    evaluated = {e.label: e for e in out.summary.candidates}
    assert evaluated["fp32"].proxy == 0.0
    assert evaluated["int8"].proxy == pytest.approx(kl.score(Candidate.uniform(prepared.layer_names, 8, 8)), rel=1e-5)
