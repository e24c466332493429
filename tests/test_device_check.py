"""The GPU device check (benchmarks/device_check.sh, ``python -m benchmarks gpu``) in its dry mode: every
step that needs no GPU, end to end through the shell entry, on the tests' tiny model."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.tvm
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed (the dry run compiles CUDA for sm_90)")
def test_dry_device_check_compiles_for_sm90_and_writes_unmeasured_results(tmp_path: Path) -> None:
    pytest.importorskip("tvm")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--dry", "--case", "tiny",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads((tmp_path / "gpu.json").read_text())
    data = payload["data"]
    assert data["measured"] is False and data["dry"] is True and "--dry" in data["why_unmeasured"]
    assert payload["machine"]["date"].endswith("UTC") and "gpus" in data["gpu"]
    (case,) = data["cases"]
    rows = {v["label"]: v["build"] for v in case["variants"]}
    assert set(rows) == {"FP32", "FP16", "INT8 uniform"}
    assert all(b["ok"] and b["fatbin_bytes"] > 0 and "sm_90" in b["target"] for b in rows.values())
    assert "dp4a" in rows["INT8 uniform"]["instructions"]  # the int8 layers run on __dp4a
    assert all(v.get("latency_ms") is None for v in case["variants"])
    md = (tmp_path / "gpu.md").read_text()
    assert "**Not measured**" in md and "unmeasured" in md


def test_dry_mode_never_writes_into_results() -> None:
    from benchmarks import gpu
    from benchmarks.common import RESULTS_DIR

    args = argparse.Namespace(dry=True, out=RESULTS_DIR)
    with pytest.raises(SystemExit, match="never writes into results"):
        gpu.run(args)
