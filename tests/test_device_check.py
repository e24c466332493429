"""The GPU device check (benchmarks/device_check.sh, ``python -m benchmarks gpu``) in its dry mode: every
step that needs no GPU, end to end through the shell entry, on the tests' tiny model."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
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


@pytest.mark.tvm
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed (kernels are compiled to cubins)")
def test_driver_path_sums_checked_layer_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The path for a GPU machine whose TVM has no CUDA runtime, up to the GPU: every distinct layer
    kernel planned and compiled to a cubin in a process pool; the device itself is faked (it echoes the
    host build, one 'millisecond' a kernel), so the plumbing and the kernel sum are what is checked."""
    pytest.importorskip("tvm")
    from benchmarks import gpu
    from mpsearch.hardware import cuda_driver

    seen = []

    class FakeKernel:
        def __init__(self, device_plan: cuda_driver.DevicePlan, cubin: bytes, buffers: dict) -> None:
            assert cubin[:4] == b"\x7fELF" and device_plan.launches
            seen.append(device_plan)
            self.out = None

        def run(self, arrays: dict) -> None:
            self.arrays = arrays

        def output(self, name: str) -> np.ndarray:
            return np.zeros(1)

        def launch(self) -> None:
            pass

        def time(self, m: object) -> list[float]:
            return [1e-3] * 3

        def close(self) -> None:
            pass

    monkeypatch.setattr(cuda_driver, "DriverKernel", FakeKernel)
    monkeypatch.setattr(cuda_driver, "host_reference", lambda spec, arrays: np.zeros(1))
    case = gpu.load_case("tiny")
    rows = gpu.candidates(case, None, "")
    out = gpu.measure_driver("nvidia_h100", case, rows, tmp_path)
    layers = len(case.prepared.layer_names)
    assert [r["kernel_sum_ms"] for r in out] == [pytest.approx(layers * 1.0)] * 3, [r["error"] for r in out]
    assert all(r["error"] is None and r["layer_kernels_match_host"] for r in out), [r["error"] for r in out]
    assert len(seen) >= 3  # distinct kernels of FP32, FP16 and INT8, each planned once
