"""The benchmark harness: result files, the runner's CLI, and the candidate sampler (no timing here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.common import BenchmarkResult, machine_info, write_result
from benchmarks.cost_model import random_candidates

ROOT = Path(__file__).resolve().parent.parent


def test_result_files_carry_machine_and_date(tmp_path: Path) -> None:
    result = BenchmarkResult("demo", "A demo", {"ratio": 1.5}, "| a |\n|---|\n| 1 |", wall_s=3.2,
                             machine=machine_info(2))
    js, md = write_result(result, tmp_path)
    payload = json.loads(js.read_text())
    assert payload["data"] == {"ratio": 1.5} and payload["machine"]["threads"] == 2
    assert payload["machine"]["cpu"] and payload["machine"]["date"].endswith("UTC")
    text = md.read_text()
    assert text.startswith("# A demo") and payload["machine"]["cpu"] in text and "| 1 |" in text


def test_runner_lists_and_rejects_unknown_benchmarks() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "no_such_bench"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "unknown benchmark 'no_such_bench'" in line and "cost_model" in line and len(line.splitlines()) == 1


def test_runner_lists_only_benchmarks() -> None:
    import importlib

    from benchmarks.__main__ import available

    names = available()
    assert "cost_model" in names and "cases" not in names and "common" not in names
    for name in names:  # what the runner needs of each: a name for its files, a title and run(args)
        module = importlib.import_module(f"benchmarks.{name}")
        assert module.NAME == name and module.TITLE and callable(module.run)


def test_random_candidates_are_distinct_and_mixed() -> None:
    layers = [f"l{i}" for i in range(6)]
    pairs = [(32, 32), (8, 8), (4, 8)]
    cands = random_candidates(layers, pairs, 20, seed=1)
    assert len({c.key() for c in cands}) == 20
    assert all(len(set(c.values())) > 1 and set(c) == set(layers) for c in cands)
    assert [c.key() for c in cands] == [c.key() for c in random_candidates(layers, pairs, 20, seed=1)]
