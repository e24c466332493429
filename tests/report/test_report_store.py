"""summary.json round trip, its loader's errors, and ``mpsearch-report`` rebuilding a run's report from it."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from importlib import metadata

import numpy as np
import pandas as pd
import pytest

from mpsearch.report import (
    ReportError,
    candidates_frame,
    load_summary,
    save_summary,
    summary_from_dict,
    summary_to_dict,
    write_report,
)
from mpsearch.report.cli import main

REPORT_FILES = ["pareto.csv", "pareto.parquet", "report.md", "report.html", "pareto.png", "memory.png",
                "bits.png", "prediction.png", "sensitivity.png", "proxy.png", "fronts.png"]


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_round_trip(full, tmp_path):
    full.candidates[0].proxy = float("nan")  # the pipeline writes NaN when a pair has no score
    full.candidates[1].measured_latency_ms = None
    full.layer_latency_ms.iloc[1, 2] = np.nan
    path = save_summary(full)
    data = _strict_json(path.read_text())
    assert data["candidates"][0]["proxy"] is None and data["format"] == 1

    back = summary_from_dict(data, tmp_path / "moved")
    assert back.run_dir == tmp_path / "moved"
    pd.testing.assert_frame_equal(candidates_frame(back), candidates_frame(full))
    pd.testing.assert_frame_equal(back.layer_latency_ms, full.layer_latency_ms)
    assert back.layer_latency_ms.index.name == "layer"
    assert math.isnan(back.candidates[0].proxy)
    for name in ("model", "hw_profile", "device", "layers", "layer_macs", "layer_params", "timings_s",
                 "versions", "notes", "search_fronts", "proxy_validation", "peers"):
        assert getattr(back, name) == getattr(full, name), name
    assert back.sensitivity["activation_trace"] == full.sensitivity["activation_trace"]
    # The config is stored as plain data: tuples become lists, paths strings.
    assert back.config["search"]["budgets"] == [1.0, 2.0] and back.config["run_dir"] == "/tmp/run"
    assert [ev.candidate for ev in back.candidates] == [ev.candidate for ev in full.candidates]
    assert summary_to_dict(back) | {"run_dir": None} == data | {"run_dir": None}


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_dir", "is not a directory"),
        ("file", "is not a directory"),
        ("no_summary", "no summary.json in"),
        ("bad_json", "cannot read"),
        ("old_format", "summary format 0 is not 1"),
        ("missing_field", "lacks the field 'candidates'"),
        ("bad_bits", "malformed field"),
        ("not_object", "must be a JSON object"),
    ],
)
def test_load_errors(summary, tmp_path, case, message):
    save_summary(summary)
    run_dir, path = summary.run_dir, summary.run_dir / "summary.json"
    data = json.loads(path.read_text())
    if case == "missing_dir":
        run_dir = tmp_path / "nope"
    elif case == "file":
        run_dir = path
    elif case == "no_summary":
        path.unlink()
    elif case == "bad_json":
        path.write_text(path.read_text()[:100])  # a truncated file
    elif case == "old_format":
        path.write_text(json.dumps(data | {"format": 0}))
    elif case == "missing_field":
        path.write_text(json.dumps({k: v for k, v in data.items() if k != "candidates"}))
    elif case == "bad_bits":
        data["candidates"][0]["candidate"]["conv1"] = [9, 8]
        path.write_text(json.dumps(data))
    elif case == "not_object":
        path.write_text("[1, 2]")
    with pytest.raises(ReportError, match=message) as info:
        load_summary(run_dir)
    assert "\n" not in str(info.value)


def test_rebuild_from_stored_summary(full, fast_png, capsys):
    paths = write_report(full)
    run_dir = full.run_dir
    before = {name: (run_dir / name).read_bytes() for name in REPORT_FILES}
    assert set(p.name for p in paths.values()) == set(REPORT_FILES) | {"summary.json"}
    for name in REPORT_FILES:
        (run_dir / name).unlink()

    assert main([str(run_dir)]) == 0
    for name in REPORT_FILES:
        assert (run_dir / name).read_bytes() == before[name], name
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(REPORT_FILES + ["summary.json"])
    pd.testing.assert_frame_equal(pd.read_parquet(run_dir / "pareto.parquet"), candidates_frame(full))


def test_rebuild_reads_only_the_summary(full, fast_png, tmp_path):
    write_report(full)
    moved = tmp_path / "moved-run"
    shutil.copytree(full.run_dir, moved)
    data = json.loads((moved / "summary.json").read_text())
    data["candidates"][0]["accuracy"] = 0.5  # pareto-0: the rebuilt tables must show the stored value
    (moved / "summary.json").write_text(json.dumps(data))

    assert main(["-q", str(moved)]) == 0
    csv = pd.read_csv(moved / "pareto.csv").set_index("label")
    assert csv.loc["pareto-0", "accuracy"] == 0.5
    assert csv.loc["pareto-0", "acc_drop_pts"] == pytest.approx(100 * (0.915 - 0.5))
    text = (moved / "report.md").read_text()
    assert f"**run directory**: `{moved}`" in text
    assert json.loads((moved / "summary.json").read_text()) == data  # the rebuild leaves the summary alone


def test_cli_bad_run_dir(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mpsearch-report: error: ") and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no summary.json in" in capsys.readouterr().err


def test_cli_process_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mpsearch.report.cli", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"mpsearch-report: error: no summary.json in {str(tmp_path)!r}; give a run folder written by "
        "mpsearch (or re-run the search there)"
    ]


def test_entry_point_declared():
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts.get("mpsearch-report") == "mpsearch.report.cli:main"
