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


def make_peers() -> dict:
    """The peers stage's rows: ONNX Runtime FP32 the fastest peer, its INT8 not made, the pick faster."""
    return {"pick": "pareto-1", "pick_ms": 1.2, "pick_accuracy": 0.905, "device": "Test CPU", "threads": 1,
            "batch": 1, "rounds": 7, "skipped": None, "fastest_peer": "ort_fp32", "pick_over_fastest_peer": 0.5,
            "rows": [{"key": "pytorch_fp32", "method": "PyTorch FP32 (eager)", "latency_ms": 6.0, "accuracy": 0.915,
                      "error": None},
                     {"key": "ort_fp32", "method": "ONNX Runtime FP32", "latency_ms": 2.4, "accuracy": 0.915,
                      "error": None},
                     {"key": "ort_int8_static", "method": "ONNX Runtime INT8 static (QDQ, per-channel)",
                      "latency_ms": None, "accuracy": None, "error": "ValueError: no calibration"}]}


def add_optional_data(s: RunSummary) -> RunSummary:
    """Fill every optional section: sensitivity, proxy validation, search fronts, peers and an exact-ILP pick."""
    s.sensitivity = {
        "hessian_trace": {"conv1": 10.0, "layer1.conv": 2.0, "layer2.conv": 0.5, "fc": 0.05},
        "activation_trace": {"conv1": 1.0, "layer1.conv": 0.3, "layer2.conv": 0.2},  # fc missing
    }
    hutch = [0.01, 0.05, 0.1, 0.2, 0.4, 0.8]
    drops = [0.1, 0.3, 0.2, 1.0, 2.5, 4.0]
    fisher = [0.02, 0.01, 0.3, 0.2, None, 0.9]
    s.proxy_validation = {
        "n": 6,
        "spearman": {"hutchinson": 0.943},  # fisher not stored: computed by the report
        "estimator_seconds": {"hutchinson": 12.34, "fisher": 0.5},
        "points": [{"key": f"k{i}", "acc_drop_pts": d, "hutchinson": h, "fisher": f}
                   for i, (h, d, f) in enumerate(zip(hutch, drops, fisher))],
    }
    s.search_fronts = {
        "optuna": [{"proxy": 0.2, "latency_ms": 1.0, "weight_kib": 4.0},
                   {"proxy": 0.01, "latency_ms": 2.0, "weight_kib": 9.0},
                   {"proxy": 0.05, "latency_ms": 1.5, "weight_kib": 6.0}],
        "ilp": [{"proxy": 0.15, "latency_ms": 1.0, "weight_kib": 4.0},
                {"proxy": 0.04, "latency_ms": 1.5, "weight_kib": 6.5}],
    }
    s.peers = make_peers()
    s.candidates.append(EvaluatedCandidate(
        "ilp-1.5ms", bits((8, 8), (4, 8), (8, 8), (4, 8)), "ilp", 0.04, 1.5, 1.55, 0.03, 6500, 0.907, None))
    return s


@pytest.fixture
def full(tmp_path: Path) -> RunSummary:
    """The synthetic run with every optional section filled."""
    return add_optional_data(make_summary(tmp_path / "run-full"))


@pytest.fixture(scope="session")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunSummary, dict[str, Path]]:
    """The full run's report, written once per session (drawing plots is the slow part); do not modify."""
    from mpsearch.report import write_report

    s = add_optional_data(make_summary(tmp_path_factory.mktemp("report") / "run"))
    return s, write_report(s)


@pytest.fixture(scope="session")
def _tiny_png() -> bytes:
    import matplotlib.pyplot as plt

    from mpsearch.report import figure_png

    return figure_png(plt.figure(figsize=(0.2, 0.2)), dpi=10)


@pytest.fixture
def fast_png(monkeypatch: pytest.MonkeyPatch, _tiny_png: bytes) -> None:
    """Build every figure but skip rasterising it (the slow part); tests of file handling use this."""
    import matplotlib.pyplot as plt

    from mpsearch.report import writer

    def fake(fig, dpi: int = 0) -> bytes:
        assert fig.axes  # the plot was really built
        plt.close(fig)
        return _tiny_png

    monkeypatch.setattr(writer, "figure_png", fake)
