"""A real run's console: mpsearch's stage lines, no TVM log lines; TVM's output is in the run's tvm.log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.conftest import REPO, TINY

#: A TVM log line: MetaSchedule's task scheduler ("[task_scheduler.cc:174] Initializing Task #0") or a
#: C++ LOG line written straight to stderr ("[..] /project/src/.../rewrite_tensorize.cc:50: Warning: ..").
TVM_LINE = re.compile(r"\b\w+\.cc:\d+")


def _run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "mpsearch.cli", *TINY, "hw_profile=host_cpu_1t", "hw_profile.trials_per_task=1",
            "search.w_bits=[8,32]", "search.a_bits=[8,32]", f"results_dir={tmp_path / 'results'}",
            f"cache_dir={tmp_path / 'cache'}", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
@pytest.mark.tvm
def test_tvm_output_goes_to_the_run_folder_log_not_the_console(tmp_path: Path) -> None:
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert not TVM_LINE.search(console), [ln for ln in console.splitlines() if TVM_LINE.search(ln)][:5]
    assert "stage: search" in console and "Traceback" not in console
    (run_dir,) = [p for p in (tmp_path / "results").iterdir() if not p.name.startswith("_")]
    log = (run_dir / "tvm.log").read_text()
    assert TVM_LINE.search(log) and "Initializing Task" in log  # the tuning it did is logged there
    assert not (tmp_path / "cache" / "logs").exists() or not any((tmp_path / "cache" / "logs").iterdir())
