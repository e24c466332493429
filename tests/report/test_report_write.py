from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from mpsearch.report import (
    atomic_write_bytes,
    bits_frame,
    candidates_frame,
    fronts_frame,
    plot_bits,
    plot_memory,
    plot_pareto,
    plot_prediction,
    plot_proxy_validation,
    plot_search_fronts,
    plot_sensitivity,
    prediction_points,
    proxy_validation_table,
    sensitivity_frame,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE_FILES = ["bits.png", "memory.png", "pareto.csv", "pareto.parquet", "pareto.png", "prediction.png",
              "report.html", "report.md", "summary.json"]
OPTIONAL_PLOTS = ["fronts.png", "proxy.png", "sensitivity.png"]


def _check_outputs(paths, run_dir, names, min_png=0):
    assert sorted(p.name for p in paths.values()) == sorted(names)
    for key, path in paths.items():
        if path.suffix == ".png":
            assert key == path.name.replace(".", "_")
            data = path.read_bytes()
            assert data[:8] == PNG_MAGIC and len(data) > min_png
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(names)


def test_write_report(summary, fast_png):
    paths = write_report(summary)
    _check_outputs(paths, summary.run_dir, BASE_FILES)

    csv = pd.read_csv(paths["pareto_csv"])
    frame = candidates_frame(summary)
    assert list(csv.columns) == list(frame.columns)
    assert list(csv["label"]) == ["pareto-2", "pareto-1", "pareto-3", "pareto-0", "fp32", "int8"]
    pd.testing.assert_frame_equal(csv, frame, check_dtype=False)
    parquet = pd.read_parquet(paths["pareto_parquet"])
    pd.testing.assert_frame_equal(parquet, frame)  # dtypes kept, unlike the csv

    text = paths["report_md"].read_text()
    assert "91.50" in text and "91.10" in text
    assert "![Accuracy versus latency](pareto.png)" in text and "(bits.png)" in text
    # Sections without data say so plainly instead of drawing an empty plot.
    assert "No sensitivity signals were recorded for this run." in text
    assert "The proxy was not validated in this run" in text
    assert "No search fronts were stored for this run." in text
    assert "No exact-ILP candidates were evaluated in this run." in text
    for name in OPTIONAL_PLOTS:
        assert f"({name})" not in text
    assert not plt.get_fignums()  # figures closed


def test_write_report_full(full_report):
    s, paths = full_report
    _check_outputs(paths, s.run_dir, BASE_FILES + OPTIONAL_PLOTS, min_png=5_000)
    text = paths["report_md"].read_text()
    for name in ["pareto.png", "memory.png", "bits.png", "prediction.png", *OPTIONAL_PLOTS]:
        assert f"]({name})" in text
    # The ILP pick is in its own table and in the csv with its kind; the Pareto table does not list it.
    ilp_section = text.split("## Exact-ILP picks")[1].split("## Layers")[0]
    assert "| ilp-1.5ms | – | W8A8x2 W4A8x2 | 0.04 | 1.500 | 1.550 ± 0.030 | -3.2 |" in ilp_section
    assert "ilp-1.5ms" not in text.split("## Pareto front")[1].split("## Exact-ILP picks")[0]
    csv = pd.read_csv(paths["pareto_csv"])
    assert list(csv["kind"]) == ["pareto"] * 4 + ["ilp"] + ["baseline"] * 2
    assert "| hutchinson | +0.943 | 6 | 12.3 |" in text and "| fisher | +0.500 | 5 | 0.5 |" in text
    assert "| optuna | 3 | 0.01 | 1.000 | 2.000 | 4.0 |" in text and "| ilp | 2 | 0.04 |" in text
    assert "| fc | 0.05 | – |" in text  # a layer one signal lacks
    assert "on the 7 measured candidates: median |error| 9.1 %" in text


def test_stale_plot_removed(full, fast_png):
    paths = write_report(full)
    assert paths["proxy_png"].exists()
    full.proxy_validation = None
    full.search_fronts = {}
    paths = write_report(full)
    assert "proxy_png" not in paths and "fronts_png" not in paths
    assert not (full.run_dir / "proxy.png").exists() and not (full.run_dir / "fronts.png").exists()
    assert (full.run_dir / "sensitivity.png").exists()


def test_write_report_predicted_only(predicted_only, fast_png):
    paths = write_report(predicted_only)
    names = [n for n in BASE_FILES if n != "prediction.png"]  # nothing measured: no cost-model check
    _check_outputs(paths, predicted_only.run_dir, names)
    csv = pd.read_csv(paths["pareto_csv"])
    assert csv["measured_latency_ms"].isna().all() and not csv["pareto_measured"].any()
    assert "could not be checked in this run" in paths["report_md"].read_text()


def test_axis_label_says_which_latency(summary, predicted_only):
    for s, word in ((summary, "measured"), (predicted_only, "predicted")):
        fig = plot_pareto(candidates_frame(s))
        try:
            assert fig.axes[0].get_xlabel().startswith(word)
        finally:
            plt.close(fig)


def _legend(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_front_plots_mark_ilp_and_baselines(full):
    frame = candidates_frame(full)
    for plot in (plot_pareto, plot_memory):
        fig = plot(frame)
        try:
            labels = _legend(fig)
            assert "exact ILP pick" in labels and "FP32" in labels and "uniform INT8" in labels
            assert "ilp-1.5ms" in [t.get_text() for t in fig.axes[0].texts]
        finally:
            plt.close(fig)


def test_bits_heatmap_panels(summary):
    fig = plot_bits(*bits_frame(summary))
    try:
        w_texts = [t.get_text() for t in fig.axes[0].texts]
        a_texts = [t.get_text() for t in fig.axes[1].texts]
        # Rows fastest first: pareto-2 is W8A8 W4A4 W4A4 W2A4.
        assert len(w_texts) == len(a_texts) == 16
        assert w_texts[:4] == ["8", "4", "4", "2"] and a_texts[:4] == ["8", "4", "4", "4"]
        assert fig.axes[0].get_title(loc="left") == "weight bits"
        assert fig.axes[1].get_title(loc="left") == "activation bits"
        # One colour per bit-width present, shared by both panels.
        assert [t.get_text() for t in fig.axes[2].get_yticklabels()] == ["2", "4", "6", "8"]
    finally:
        plt.close(fig)


def test_data_plots(full):
    frame = candidates_frame(full)
    fig = plot_prediction(prediction_points(frame))
    try:
        assert fig.axes[0].get_title() == "cost model: median |error| 9.1 %, max 25.0 % (n = 7)"
        assert "pareto-2 -20.0%" in [t.get_text() for t in fig.axes[0].texts]
    finally:
        plt.close(fig)
    fig = plot_proxy_validation(proxy_validation_table(full))
    try:
        titles = [ax.get_title() for ax in fig.axes if ax.axison]
        assert titles == ["hutchinson: Spearman ρ = 0.94 (n = 6)", "fisher: Spearman ρ = 0.50 (n = 5)"]
    finally:
        plt.close(fig)
    fig = plot_search_fronts(fronts_frame(full))
    try:
        assert _legend(fig) == ["optuna (3 points)", "ilp (2 points)"]
    finally:
        plt.close(fig)
    fig = plot_sensitivity(sensitivity_frame(full))
    try:
        assert [ax.get_title(loc="left") for ax in fig.axes] == ["hessian_trace", "activation_trace"]
        assert fig.axes[0].get_yscale() == "log"  # 10 / 0.05 spans more than 50x
    finally:
        plt.close(fig)


def test_empty_front_still_writes(summary, fast_png):
    summary.candidates = [ev for ev in summary.candidates if ev.kind == "baseline"]
    paths = write_report(summary)
    assert paths["bits_png"].read_bytes()[:8] == PNG_MAGIC
    assert "no Pareto candidates" in paths["report_md"].read_text()


def test_invalid_summary_writes_nothing(summary):
    summary.candidates[1].kind = "frontier"
    with pytest.raises(Exception, match="kind"):
        write_report(summary)
    assert not summary.run_dir.exists()


def test_atomic_write_replaces(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temporary file left behind
    atomic_write_bytes(tmp_path / "new_dir" / "f.txt", b"x")  # parents are created
    assert (tmp_path / "new_dir" / "f.txt").read_bytes() == b"x"
