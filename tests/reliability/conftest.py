"""Helpers of the reliability suite: a tiny run configuration, file-tree snapshots and the CLI driver."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mpsearch.config import RunConfig
from mpsearch.testing import TableBackend, tiny_run_config

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("cli_driver.py")

#: CLI overrides for a run on the tiny model and synthetic data (fast: no TVM, seconds per run).
TINY = ["model.name=tiny", "model.factory=mpsearch.testing:tiny_resnet", "model.input_shape=[1,1,8,8]",
        "data.factory=mpsearch.testing:synthetic_split", "data.calib_samples=32", "data.test_samples=64",
        "search.n_trials=30", "search.sensitivity_samples=16", "search.proxy_validation=0",
        "search.measure_front=2", "search.ilp_budgets=2", "progress=false"]


def tiny_config(tmp_path: Path, **search: Any) -> RunConfig:
    settings = {"n_trials": 30, "sensitivity_samples": 16, "proxy_validation": 0, "measure_front": 2,
                "ilp_budgets": 2, **search}
    return tiny_run_config(tmp_path, data__calib_samples=32, data__test_samples=64,
                           **{f"search__{k}": v for k, v in settings.items()})


def table_factory(**kwargs: Any):
    made: list[TableBackend] = []

    def make(profile, cache_dir, progress):
        made.append(TableBackend(profile, cache_dir, progress, **kwargs))
        return made[-1]

    make.made = made  # type: ignore[attr-defined]
    return make


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[str]:
    """Temporary or half-written files anywhere under ``root`` (atomic writes leave none)."""
    return [str(p) for p in root.rglob("*") if p.name.endswith((".tmp", ".lock")) or ".tmp" in p.name]


def one_error_line(stderr: str) -> str:
    """The single ``mpsearch: error:`` line of a failed CLI run (asserts there is exactly one, no traceback)."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("mpsearch: error:")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def run_cli_cases(tmp_path: Path, cases: list[dict[str, Any]], timeout: int = 300) -> list[dict[str, Any]]:
    """Run each case's command line through ``mpsearch.cli.main`` in its own process (see cli_driver.py)."""
    spec, out = tmp_path / "cases.json", tmp_path / "results.json"
    spec.write_text(json.dumps(cases))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, str(DRIVER), str(spec), str(out)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture
def prior_results(tmp_path: Path) -> dict[str, str]:
    """Results and caches an earlier run left: they must come through any later failure byte-identical."""
    files = {
        "results/earlier-run/report.md": "# earlier run\n",
        "results/earlier-run/pareto.csv": "label,accuracy\nfp32,0.9\n",
        "results/earlier-run/study.journal": '{"op_code": 0, "worker_id": "w", "study_name": "mpsearch"}\n',
        "cache/accuracy.jsonl": '{"key": "ctx-abc", "accuracy": 0.5}\n',
        "cache/sensitivity/0123.json": '{"estimator": "hutchinson"}\n',
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return {k: v for k, v in snapshot(tmp_path).items() if k in files}
