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


@pytest.mark.parametrize("isa,a_bits,seven", [("avx2", None, True), ("avx512vnni", None, False),
                                              ("avx512bw", [4, 8, 32], False)])
def test_default_activation_widths_follow_the_targets_dots(tmp_path: Path, caplog, isa, a_bits, seven) -> None:
    """On a target whose 8-bit activations take a slower dot than 7-bit ones (x86 without VNNI) the
    default search offers 7-bit activations too, and says so; a VNNI target, or a menu the user gave,
    keeps its widths."""
    def make(profile, cache_dir, progress):
        backend = TableBackend()
        backend.dot_isa = isa
        return backend

    with caplog.at_level("INFO", logger="mpsearch.pipeline"):
        out = run(tiny_run_config(tmp_path, search__a_bits=a_bits, search__n_trials=20), make)
    pairs = json.loads((out.run_dir / "cost_table.json").read_text())["pairs"]
    assert [8, 8] in pairs and ([8, 7] in pairs) == seven and ([4, 7] in pairs) == seven
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("activation widths")]
    assert said == ([f"activation widths 4, 7, 8, 32: 8-bit activations take a slower dot than 7-bit ones on this "
                     f"target's {isa} kernels (set search.a_bits to choose them yourself)"] if seven else [])


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


def test_accuracy_cache_hashes_all_the_data(tmp_path: Path, tiny_prepared, tiny_ranges) -> None:
    """Issue #16: the key was (weights, ranges, first batch, number of batches), so 1,600 and 2,000
    test images at batch 500 (4 batches each, same first batch) shared accuracies."""
    import torch

    from mpsearch.candidate import Candidate
    from mpsearch.pipeline import accuracy_context, cached_accuracy, evaluate_accuracy

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 1, 8, 8, generator=gen)
    y = torch.randint(0, 3, (2000,), generator=gen)
    small = [(x[i:min(i + 500, 1600)], y[i:min(i + 500, 1600)]) for i in range(0, 1600, 500)]  # last batch: 100
    large = [(x[i:i + 500], y[i:i + 500]) for i in range(0, 2000, 500)]
    assert len(small) == len(large) == 4 and torch.equal(small[0][0], large[0][0])
    assert accuracy_context(tiny_prepared, tiny_ranges, small) != accuracy_context(tiny_prepared, tiny_ranges, large)
    # labels, shapes and dtypes count too
    relabelled = [*large[:-1], (large[-1][0], (large[-1][1] + 1) % 3)]
    assert accuracy_context(tiny_prepared, tiny_ranges, relabelled) != accuracy_context(tiny_prepared, tiny_ranges, large)
    as_double = [(xb.double(), yb) for xb, yb in large]
    assert accuracy_context(tiny_prepared, tiny_ranges, as_double) != accuracy_context(tiny_prepared, tiny_ranges, large)

    cand = Candidate.uniform(tiny_prepared.layer_names, 8, 8)
    truth_small = evaluate_accuracy(tiny_prepared, cand, tiny_ranges, small)
    truth_large = evaluate_accuracy(tiny_prepared, cand, tiny_ranges, large)
    assert truth_small != truth_large  # the regression below could not show otherwise
    assert cached_accuracy(tiny_prepared, tiny_ranges, small, tmp_path)(cand) == truth_small
    assert cached_accuracy(tiny_prepared, tiny_ranges, large, tmp_path)(cand) == truth_large  # not small's entry
    assert cached_accuracy(tiny_prepared, tiny_ranges, small, tmp_path)(cand) == truth_small  # a hit, same value
