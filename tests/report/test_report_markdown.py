from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml

from mpsearch.report import ReportError, frame_to_markdown, markdown_table, render_markdown


def test_markdown_table_format():
    text = markdown_table(["a", "b|c"], [["x|y", 1.23456], [None, np.nan], [True, 3]], ["l", "r"])
    assert text.splitlines() == [
        "| a | b\\|c |",
        "|:---|---:|",
        "| x\\|y | 1.235 |",
        "| – | – |",
        "| yes | 3 |",
    ]
    with pytest.raises(ReportError):
        markdown_table(["a"], [[1, 2]])


def test_frame_to_markdown():
    frame = pd.DataFrame({"W8A8": [0.123456, np.nan]}, index=pd.Index(["conv1", "fc"], name="layer"))
    assert frame_to_markdown(frame, ".3f").splitlines() == [
        "| layer | W8A8 |",
        "|:---|---:|",
        "| conv1 | 0.123 |",
        "| fc | – |",
    ]


def _yaml_block(text: str) -> dict:
    match = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert match
    return yaml.safe_load(match.group(1))


def test_render_markdown(summary):
    text = render_markdown(summary)
    assert text.startswith("# mpsearch report: resnet8 on x86-avx2")
    assert "Test CPU @ 3.0GHz, 2 cores" in text
    # Baseline accuracies and latencies, then each Pareto label.
    assert "| FP32 | W32A32x4 | 91.50 | 4.000 ± 0.100 |" in text
    assert "| uniform INT8 | W8A8x4 | 91.10 | 2.000 ± 0.050 |" in text
    for label in ("pareto-0", "pareto-1", "pareto-2", "pareto-3"):
        assert f"| {label} |" in text
    assert "](pareto.png)" in text and "](bits.png)" in text
    assert "## Predicted kernel latency per layer (ms)" in text and "| conv1 | 0.2000 |" in text
    assert "| tuning | 300.0 |" in text and "| **sum** | 313.2 |" in text
    assert "| tvm | 0.19.0 |" in text
    assert "- latency measured with 8 tuning trials per task" in text
    assert _yaml_block(text) == {
        "model": {"name": "resnet8"}, "search": {"n_trials": 50, "budgets": [1.0, 2.0]}, "run_dir": "/tmp/run",
    }


def test_render_markdown_without_layer_latency(predicted_only):
    predicted_only.layer_latency_ms = None
    text = render_markdown(predicted_only)
    assert "No per-layer kernel latencies were stored for this run." in text
    assert "| conv1 | 0.2000 |" not in text
    assert "cost-table predictions" in text  # caveat added when nothing was measured
