"""The whole pipeline on a tiny model with the table backend: every stage runs, results are reported."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest

from mpsearch.config import RunConfig
from mpsearch.errors import ConfigError, InfeasibleBudgetError
from mpsearch.pipeline import run
from mpsearch.testing import TableBackend, tiny_run_config

def tiny_config(tmp_path: Path, **budget: float) -> RunConfig:
    return tiny_run_config(tmp_path, **{f"budget__{k}": v for k, v in budget.items()})


def factory(backends: list[TableBackend]):
    def make(profile, cache_dir, progress):
        backends.append(TableBackend())
        return backends[-1]
    return make


def test_end_to_end_with_table_backend(tmp_path: Path) -> None:
    backends: list[TableBackend] = []
    out = run(tiny_config(tmp_path), factory(backends))
    for name in ("pareto.csv", "pareto.png", "bits.png", "report.md", "config.json", "study.journal",
                 "cost_table.json", "sensitivity.json", "candidates/fp32.json", "candidates/int8.json"):
        assert (out.run_dir / name).is_file(), name
    df = pd.read_csv(out.run_dir / "pareto.csv")
    assert set(df["kind"]) == {"pareto", "baseline", "ilp"} and {"fp32", "int8"} <= set(df["label"])
    assert df["measured_latency_ms"].notna().all() and df["accuracy"].between(0, 1).all()
    # the table backend measures 2% above its own prediction
    assert df["prediction_error_pct"].dropna().abs().max() == pytest.approx(2.0, abs=0.2)
    report = (out.run_dir / "report.md").read_text()
    assert "FP32" in report and "uniform INT8" in report and "pareto.png" in report
    assert json.loads((out.run_dir / "candidates/int8.json").read_text())["fc"] == [8, 8]


def test_rerun_resumes_and_reuses_caches(tmp_path: Path) -> None:
    first = run(tiny_config(tmp_path), factory([]))
    second = run(tiny_config(tmp_path), factory([]))
    assert second.run_dir == first.run_dir
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(second.run_dir / "study.journal")))
    assert len(optuna.load_study(study_name="mpsearch", storage=storage).trials) == 60  # no new trials
    assert second.summary.timings_s["sensitivity"] < first.summary.timings_s["sensitivity"]


def test_a_given_candidate_is_evaluated_beside_the_front(tmp_path: Path) -> None:
    bits = tmp_path / "mine.json"
    bits.write_text(json.dumps({"stem": [8, 8], "conv1": [4, 4], "conv2": [2, 8], "down": [8, 8], "fc": [32, 32]}))
    cfg = tiny_config(tmp_path)
    cfg.candidate = str(bits)
    out = run(cfg, factory([]))
    given = [c for c in out.summary.candidates if c.label == "given"]
    assert len(given) == 1 and given[0].candidate["conv2"] == (2, 8) and given[0].measured_latency_ms > 0
    assert "given" in pd.read_csv(out.run_dir / "pareto.csv")["label"].tolist()


def test_budgets_are_met_by_the_front(tmp_path: Path) -> None:
    out = run(tiny_config(tmp_path, weight_kib=3.0), factory([]))
    front = [c for c in out.summary.candidates if c.kind == "pareto"]
    assert front and all(c.weight_bytes <= 3.0 * 1024 for c in front)


def test_infeasible_budget_fails_before_searching(tmp_path: Path) -> None:
    with pytest.raises(InfeasibleBudgetError, match="raise budget.weight_kib to at least"):
        run(tiny_config(tmp_path, weight_kib=0.01), factory([]))
    assert not (tmp_path / "results").exists()  # no partial run folder


def test_bad_model_factory_is_a_config_error(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    cfg.model.factory = "mpsearch.testing:nope"
    with pytest.raises(ConfigError, match="has no callable 'nope'"):
        run(cfg, factory([]))


def test_checkpoint_that_is_not_a_state_dict(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a pickle")
    cfg = tiny_config(tmp_path)
    cfg.model.checkpoint = str(bad)
    with pytest.raises(ConfigError, match="is not a plain state dict"):
        run(cfg, factory([]))
