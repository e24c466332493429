from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from mpsearch.report import (
    atomic_write_bytes,
    bits_frame,
    candidates_frame,
    plot_bits,
    plot_pareto,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_outputs(paths, run_dir):
    assert set(paths) == {"pareto_csv", "pareto_png", "bits_png", "report_md"}
    assert {p.name for p in paths.values()} == {"pareto.csv", "pareto.png", "bits.png", "report.md"}
    for key in ("pareto_png", "bits_png"):
        data = paths[key].read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in run_dir.iterdir()) == ["bits.png", "pareto.csv", "pareto.png", "report.md"]


def test_write_report(summary):
    paths = write_report(summary)
    _check_outputs(paths, summary.run_dir)

    csv = pd.read_csv(paths["pareto_csv"])
    frame = candidates_frame(summary)
    assert list(csv.columns) == list(frame.columns)
    assert list(csv["label"]) == ["pareto-2", "pareto-1", "pareto-3", "pareto-0", "fp32", "int8"]
    pd.testing.assert_frame_equal(csv, frame, check_dtype=False)

    text = paths["report_md"].read_text()
    assert "91.50" in text and "91.10" in text
    assert "![Accuracy versus latency](pareto.png)" in text and "(bits.png)" in text
    assert not plt.get_fignums()  # figures closed


def test_write_report_predicted_only(predicted_only):
    paths = write_report(predicted_only)
    _check_outputs(paths, predicted_only.run_dir)
    csv = pd.read_csv(paths["pareto_csv"])
    assert csv["measured_latency_ms"].isna().all() and not csv["pareto_measured"].any()


def test_axis_label_says_which_latency(summary, predicted_only):
    for s, word in ((summary, "measured"), (predicted_only, "predicted")):
        fig = plot_pareto(candidates_frame(s))
        try:
            assert fig.axes[0].get_xlabel().startswith(word)
        finally:
            plt.close(fig)


def test_bits_plot_annotations(summary):
    fig = plot_bits(*bits_frame(summary))
    try:
        texts = [t.get_text() for t in fig.axes[0].texts]
        assert len(texts) == 16 and texts[:4] == ["8/8", "4/4", "4/4", "2/4"]
    finally:
        plt.close(fig)


def test_empty_front_still_writes(summary):
    summary.candidates = [ev for ev in summary.candidates if ev.kind == "baseline"]
    paths = write_report(summary)
    assert paths["bits_png"].read_bytes()[:8] == PNG_MAGIC
    assert "no Pareto candidates" in paths["report_md"].read_text()


def test_atomic_write_replaces(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temporary file left behind
    atomic_write_bytes(tmp_path / "new_dir" / "f.txt", b"x")  # parents are created
    assert (tmp_path / "new_dir" / "f.txt").read_bytes() == b"x"
