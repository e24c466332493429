"""The pipeline evaluates the exact-ILP pick beside the searched front and reports both fronts."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from mpsearch.pipeline import run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from test_pipeline import factory, tiny_config  # noqa: E402


def test_ilp_pick_and_fronts_in_the_report(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, weight_kib=3.0)
    cfg.search.n_trials = 30
    cfg.search.sensitivity_samples = 8
    cfg.search.ilp_budgets = 5
    cfg.search.proxy_validation = 0
    out = run(cfg, factory([]))
    s = out.summary
    ilp = [c for c in s.candidates if c.kind == "ilp"]
    assert [c.label for c in ilp] == ["ilp"]
    pick = ilp[0]
    # Measured for real like the front, within the budget, and no searched candidate has a lower proxy there.
    assert pick.measured_latency_ms and pick.accuracy is not None and pick.weight_bytes <= 3.0 * 1024
    assert all(pick.proxy <= c.proxy + 1e-9 for c in s.candidates if c.kind == "pareto")
    assert set(s.search_fronts) == {"optuna", "ilp"}
    for name, pts in s.search_fronts.items():
        assert pts and all(p["weight_kib"] <= 3.0 + 1e-9 for p in pts), name
    assert min(p["proxy"] for p in s.search_fronts["ilp"]) == pytest.approx(pick.proxy)
    assert any("Hypervolume of the search's" in n for n in s.notes)
    df = pd.read_csv(out.run_dir / "pareto.csv")
    assert "ilp" in df["label"].tolist()
    assert (out.run_dir / "candidates" / "ilp.json").is_file()
