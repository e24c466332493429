from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mpsearch.candidate import Candidate
from mpsearch.report import (
    EvaluatedCandidate,
    ReportError,
    bits_frame,
    candidates_frame,
    non_dominated,
    pareto_points,
)
from mpsearch.report.tables import FRAME_COLUMNS

from .conftest import LAYERS


def row(frame: pd.DataFrame, label: str) -> pd.Series:
    return frame.set_index("label").loc[label]


def test_candidates_frame_rows_and_columns(summary):
    frame = candidates_frame(summary)
    assert list(frame.columns) == list(FRAME_COLUMNS) + LAYERS
    # Pareto rows sorted by measured latency, then baselines in input order.
    assert list(frame["label"]) == ["pareto-2", "pareto-1", "pareto-3", "pareto-0", "fp32", "int8"]
    assert list(frame["kind"]) == ["pareto"] * 4 + ["baseline"] * 2
    p2 = row(frame, "pareto-2")
    assert p2["description"] == summary.candidates[2].candidate.describe()
    assert p2["key"] == summary.candidates[2].candidate.key()
    assert [p2[n] for n in LAYERS] == ["W8A8", "W4A4", "W4A4", "W2A4"]
    assert row(frame, "fp32")["conv1"] == "W32A32"
    assert p2["weight_kib"] == pytest.approx(4000 / 1024)
    assert p2["trial"] == 11 and pd.isna(row(frame, "fp32")["trial"])


def test_derived_metrics(summary):
    frame = candidates_frame(summary)
    p2 = row(frame, "pareto-2")
    assert p2["acc_drop_pts"] == pytest.approx(100 * (0.915 - 0.880))
    assert p2["prediction_error_pct"] == pytest.approx(100 * (1.0 - 1.25) / 1.25)  # -20 %
    assert p2["speedup_vs_fp32"] == pytest.approx(4.0 / 1.25)
    fp32 = row(frame, "fp32")
    assert fp32["acc_drop_pts"] == pytest.approx(0.0)
    assert fp32["speedup_vs_fp32"] == pytest.approx(1.0)
    assert fp32["prediction_error_pct"] == pytest.approx(25.0)


def test_pareto_measured_flags_dominated_point(summary):
    frame = candidates_frame(summary)
    flags = dict(zip(frame["label"], frame["pareto_measured"]))
    assert flags == {
        "pareto-2": True, "pareto-1": True, "pareto-3": False, "pareto-0": True, "fp32": False, "int8": False,
    }


def test_non_dominated_edge_cases():
    acc = [0.9, 0.9, 0.8, 0.95, np.nan, 0.7]
    lat = [1.0, 1.0, 1.0, 2.0, 0.1, 0.5]
    # Equal points do not dominate each other; (0.8, 1.0) is beaten by (0.9, 1.0); NaN is never on the front.
    assert non_dominated(acc, lat).tolist() == [True, True, False, True, False, True]
    assert non_dominated([], []).tolist() == []
    with pytest.raises(ReportError):
        non_dominated([1.0], [1.0, 2.0])


def test_bits_frames(summary):
    w, a = bits_frame(summary)
    assert w.shape == a.shape == (4, 4)
    assert list(w.index) == list(a.index) == ["pareto-2", "pareto-1", "pareto-3", "pareto-0"]
    assert list(w.columns) == LAYERS
    assert w.loc["pareto-2"].tolist() == [8, 4, 4, 2]
    assert a.loc["pareto-2"].tolist() == [8, 4, 4, 4]
    assert w.loc["pareto-0", "fc"] == 6 and a.loc["pareto-3", "layer1.conv"] == 4
    assert w.dtypes.map(pd.api.types.is_integer_dtype).all()


def test_predicted_only_fallback(predicted_only):
    frame = candidates_frame(predicted_only)
    assert frame["prediction_error_pct"].isna().all()
    assert frame["speedup_vs_fp32"].isna().all()
    assert not frame["pareto_measured"].any()
    assert list(frame["label"][:4]) == ["pareto-2", "pareto-3", "pareto-1", "pareto-0"]  # by prediction
    w, _ = bits_frame(predicted_only)
    assert list(w.index) == ["pareto-2", "pareto-3", "pareto-1", "pareto-0"]

    points, measured = pareto_points(frame)
    assert not measured
    on_front = dict(zip(points["label"], points["on_front"]))
    # On predicted latency pareto-3 (1.4 ms, 89.0 %) is no longer dominated by pareto-1 (1.5 ms).
    assert on_front == {f"pareto-{i}": True for i in range(4)} | {"fp32": False, "int8": False}
    assert points.set_index("label").loc["fp32", "latency_ms"] == 5.0


def test_pareto_points_measured(summary):
    points, measured = pareto_points(candidates_frame(summary))
    assert measured
    p = points.set_index("label")
    assert p.loc["pareto-3", "on_front"] == False  # noqa: E712
    assert p.loc["pareto-1", "latency_ms"] == 1.6 and p.loc["pareto-1", "latency_std_ms"] == 0.04
    assert p.loc["fp32", "accuracy_pct"] == pytest.approx(91.5)


def test_partially_measured_rows_are_dropped_from_plot(summary):
    summary.candidates[0].measured_latency_ms = None  # pareto-0
    summary.candidates[2].accuracy = None  # pareto-2
    frame = candidates_frame(summary)
    assert pd.isna(row(frame, "pareto-2")["acc_drop_pts"])
    points, measured = pareto_points(frame)
    assert measured
    assert set(points["label"]) == {"pareto-1", "pareto-3", "fp32", "int8"}


def test_no_fp32_baseline(summary):
    summary.candidates = [ev for ev in summary.candidates if ev.label != "fp32"]
    frame = candidates_frame(summary)
    assert frame["acc_drop_pts"].isna().all() and frame["speedup_vs_fp32"].isna().all()


def test_invalid_summary(summary):
    dup = summary.candidates[0]
    summary.candidates.append(EvaluatedCandidate(dup.label, dup.candidate, "pareto", 0, 1, 1, 0, 1, 0.5, None))
    with pytest.raises(ReportError, match="duplicate"):
        candidates_frame(summary)
    summary.candidates[-1].label = "other"
    summary.candidates[-1].kind = "frontier"
    with pytest.raises(ReportError, match="kind"):
        candidates_frame(summary)


def test_missing_layer_is_empty(summary):
    summary.candidates[1].candidate = Candidate({n: (4, 8) for n in LAYERS[:-1]})
    frame = candidates_frame(summary)
    assert pd.isna(row(frame, "pareto-1")["fc"])
    w, a = bits_frame(summary)
    assert np.isnan(w.loc["pareto-1", "fc"]) and w.loc["pareto-1", "conv1"] == 4


def test_non_dominated_with_memory_axis():
    # (0.9, 1.0, 10) is beaten on 2 axes by (0.9, 1.0, 5) ... unless memory is ignored.
    acc, lat, mem = [0.9, 0.9, 0.8], [1.0, 1.0, 2.0], [10, 5, 1]
    assert non_dominated(acc, lat).tolist() == [True, True, False]
    assert non_dominated(acc, lat, mem).tolist() == [False, True, True]
