"""A synthetic run: 4 layers, 4 Pareto candidates (one dominated when measured), FP32 and INT8 baselines."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mpsearch.candidate import Candidate
from mpsearch.report import EvaluatedCandidate, RunSummary

LAYERS = ["conv1", "layer1.conv", "layer2.conv", "fc"]


def bits(*pairs: tuple[int, int]) -> Candidate:
    return Candidate(dict(zip(LAYERS, pairs)))


def make_summary(run_dir: Path) -> RunSummary:
    def ev(label, cand, kind, proxy, pred, meas, std, wbytes, acc, trial):
        return EvaluatedCandidate(label, cand, kind, proxy, pred, meas, std, wbytes, acc, trial)

    candidates = [
        ev("pareto-0", bits((8, 8), (8, 8), (8, 8), (6, 8)), "pareto", 0.01, 2.0, 2.2, 0.05, 9000, 0.912, 3),
        ev("pareto-1", bits((8, 8), (4, 8), (4, 8), (4, 8)), "pareto", 0.05, 1.5, 1.6, 0.04, 6000, 0.905, 7),
        ev("pareto-2", bits((8, 8), (4, 4), (4, 4), (2, 4)), "pareto", 0.20, 1.0, 1.25, 0.03, 4000, 0.880, 11),
        # Dominated once measured: pareto-1 is faster (1.6 < 1.7), more accurate (0.905 > 0.890) and smaller.
        ev("pareto-3", bits((8, 8), (8, 4), (4, 4), (4, 4)), "pareto", 0.10, 1.4, 1.7, 0.06, 7000, 0.890, 12),
        ev("fp32", Candidate.uniform(LAYERS, 32, 32), "baseline", 0.0, 5.0, 4.0, 0.10, 32000, 0.915, None),
        ev("int8", Candidate.uniform(LAYERS, 8, 8), "baseline", 0.008, 2.1, 2.0, 0.05, 8000, 0.911, None),
    ]
    layer_latency = pd.DataFrame(
        {"W8A8": [0.2, 0.5, 0.4, 0.05], "W4A8": [0.15, 0.3, 0.25, 0.04], "W4A4": [0.1, 0.2, 0.2, 0.03]},
        index=pd.Index(LAYERS, name="layer"),
    )
    return RunSummary(
        run_dir=run_dir,
        model="resnet8",
        hw_profile="x86-avx2",
        device="Test CPU @ 3.0GHz, 2 cores",
        layers=list(LAYERS),
        layer_macs={"conv1": 100_000, "layer1.conv": 400_000, "layer2.conv": 300_000, "fc": 1_000},
        layer_params={"conv1": 432, "layer1.conv": 9216, "layer2.conv": 18432, "fc": 640},
        candidates=candidates,
        layer_latency_ms=layer_latency,
        config={"model": {"name": "resnet8"}, "search": {"n_trials": 50, "budgets": (1.0, 2.0)},
                "run_dir": Path("/tmp/run")},
        timings_s={"calibration": 1.2, "sensitivity": 12.0, "tuning": 300.0},
        versions={"torch": "2.5.0", "tvm": "0.19.0", "optuna": "5.0.0", "mpsearch": "0.1.0"},
        notes=["latency measured with 8 tuning trials per task"],
    )


@pytest.fixture
def summary(tmp_path: Path) -> RunSummary:
    return make_summary(tmp_path / "run")


@pytest.fixture
def predicted_only(tmp_path: Path) -> RunSummary:
    """Same run with nothing measured."""
    s = make_summary(tmp_path / "run-pred")
    for ev in s.candidates:
        ev.measured_latency_ms = None
        ev.latency_std_ms = None
    s.notes = []
    return s
