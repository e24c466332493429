from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mpsearch import pipeline
from mpsearch.candidate import Candidate
from mpsearch.config import RunConfig, validate
from mpsearch.errors import ConfigError
from mpsearch.pipeline import run
from mpsearch.sensitivity import candidate_proxy, random_candidates, spearman, validate_proxies
from mpsearch.stages import accuracy
from mpsearch.testing import TableBackend, tiny_run_config

LAYERS = [f"l{i}" for i in range(22)]
PAIRS = [(32, 32), (8, 8), (4, 8), (4, 4)]


def test_random_candidates_are_seeded_distinct_and_spread():
    cands = random_candidates(LAYERS, PAIRS, 30, seed=0)
    assert len(cands) == 30 and len(set(cands)) == 30
    assert cands == random_candidates(LAYERS, PAIRS, 30, seed=0)
    assert cands != random_candidates(LAYERS, PAIRS, 30, seed=1)
    assert all(set(c) == set(LAYERS) and set(c.values()) <= set(PAIRS) for c in cands)
    # the per-candidate mix spreads the share of 4-bit weights far wider than uniform layer draws would
    share = [sum(c[n][0] == 4 for n in LAYERS) / len(LAYERS) for c in cands]
    assert max(share) - min(share) > 0.6
    assert len(random_candidates(["a"], [(8, 8), (4, 4)], 10, seed=0)) == 2  # only 2 exist
    assert random_candidates(LAYERS, PAIRS, 0, seed=0) == []
    with pytest.raises(ConfigError):
        random_candidates(LAYERS, PAIRS, -1, seed=0)


def test_spearman_and_validate_proxies():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    good = {n: {p: (32 - p[0]) * (i + 1) + (32 - p[1]) for p in PAIRS} for i, n in enumerate(LAYERS)}
    flat = {n: {p: float(p == (8, 8)) for p in PAIRS} for n in LAYERS}
    cands = random_candidates(LAYERS, PAIRS, 12, seed=0)
    out = validate_proxies(cands, {"good": good, "flat": flat}, lambda c: 0.01 * candidate_proxy(good, c))
    assert out["n"] == 12 and len(out["points"]) == 12
    assert out["spearman"]["good"] == pytest.approx(1.0)
    assert out["spearman"]["flat"] < 0.9
    p = out["points"][0]
    assert p["key"] == cands[0].key() and p["good"] == candidate_proxy(good, cands[0])
    assert p["acc_drop_pts"] == pytest.approx(0.01 * p["good"])
    json.dumps(out)  # plain JSON for the report


def _config(tmp_path: Path) -> RunConfig:
    return tiny_run_config(tmp_path, data__batch_size=32, search__n_trials=20, search__measure_front=2,
                           search__proxy_validation=6, search__proxy_validation_samples=64,
                           search__proxy_estimators=["hutchinson", "fisher", "delta_loss"])


def _backend(profile, cache_dir, progress):
    return TableBackend()


def test_pipeline_validates_every_estimator(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    out = run(cfg, _backend)
    val = out.summary.proxy_validation
    assert val is not None and val["n"] == 6 and val["test_samples"] == 64
    assert set(val["spearman"]) == {"hutchinson", "fisher", "delta_loss"}
    assert set(val["estimator_seconds"]) == {"hutchinson", "fisher", "delta_loss"}
    sig = out.summary.sensitivity
    assert {"hessian_trace", "activation_trace", "fisher_weight", "delta_loss_W4A4"} <= set(sig)
    assert set(sig["hessian_trace"]) == set(out.summary.layers)
    assert "Proxy validation: 6 random candidates" in " ".join(out.summary.notes)

    # the drops are real: recompute one on the first 64 test images
    prepared = pipeline.prepare_model(pipeline.build_model(cfg), (1, 1, 8, 8))
    test = pipeline.batches(pipeline.load_data(cfg, "test", 128), 32)[:2]
    point = val["points"][0]
    cand = next(c for c in random_candidates(prepared.layer_names, [(32, 32), (8, 8), (8, 4), (4, 8), (4, 4)], 6, 0)
                if c.key() == point["key"])
    ranges = pipeline.calibrate(prepared.graph_module, prepared.layer_names,
                                pipeline.batches(pipeline.load_data(cfg, "calib", 64), 32))
    fp = pipeline.evaluate_accuracy(prepared, Candidate.uniform(prepared.layer_names, 32, 32), ranges, test)
    acc = pipeline.evaluate_accuracy(prepared, cand, ranges, test)
    assert point["acc_drop_pts"] == pytest.approx(100 * (fp - acc))

    # a re-run measures nothing again (patched where the stages look it up)
    calls = []
    real = accuracy.evaluate_accuracy
    monkeypatch.setattr(accuracy, "evaluate_accuracy", lambda *a: calls.append(1) or real(*a))
    again = run(cfg, _backend)
    assert calls == [] and again.summary.proxy_validation == val


def test_selected_estimator_drives_the_search_and_validation_can_be_off(tmp_path):
    cfg = _config(tmp_path)
    cfg.search.sensitivity = "delta_loss"
    cfg.search.proxy_validation = 0
    out = run(cfg, _backend)
    assert out.summary.proxy_validation is None
    assert set(out.summary.sensitivity) == {f"delta_loss_W{w}A{a}" for w, a in [(8, 8), (8, 4), (4, 8), (4, 4)]}
    assert json.loads((out.run_dir / "sensitivity.json").read_text())["estimator"] == "delta_loss"
    assert "proxy: delta_loss" in " ".join(out.summary.notes)


@pytest.mark.parametrize("field, value, match", [
    ("sensitivity", "hessian", "search.sensitivity / search.proxy_estimators: 'hessian' is unknown"),
    ("proxy_estimators", ["fisher", "kfac"], "'kfac' is unknown"),
    ("calibration", "kl", "search.calibration='kl' is unknown; use one of minmax, percentile, mse"),
    ("calibration_bits", 16, "between 2 and 8"),
    ("proxy_validation", -1, "must be >= 0"),
    ("proxy_validation_samples", 0, "at least 1"),
])
def test_config_errors_are_one_line(field, value, match):
    cfg = RunConfig()
    setattr(cfg.search, field, value)
    with pytest.raises(ConfigError, match=match) as e:
        validate(cfg)
    assert "\n" not in str(e.value)


def test_defaults_validate():
    s = validate(RunConfig()).search
    assert s.sensitivity == "hutchinson" and s.proxy_validation > 0 and torch is not None


def test_hydra_overrides_reach_the_schema():
    from hydra import compose, initialize_config_dir

    from mpsearch.cli import CONF_DIR, to_run_config

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = to_run_config(compose(config_name="config", overrides=[
            "search.sensitivity=delta_loss", "search.calibration=mse", "search.calibration_bits=4",
            "search.proxy_validation=0", "search.proxy_estimators=[fisher]", "search.proxy_validation_samples=null"]))
    s = validate(cfg).search
    assert (s.sensitivity, s.calibration, s.calibration_bits) == ("delta_loss", "mse", 4)
    assert s.proxy_validation == 0 and s.proxy_estimators == ["fisher"] and s.proxy_validation_samples is None
