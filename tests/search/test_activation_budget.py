"""A budget on peak activation memory (planned storage + largest kernel workspace) in the ILP, the search
and the pipeline."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from mpsearch.candidate import Candidate
from mpsearch.errors import InfeasibleBudgetError
from mpsearch.pipeline import run
from mpsearch.search import SearchProblem
from mpsearch.search.ilp import solve_ilp
from tests.search.test_ilp import PAIRS, random_problem
from tests.test_pipeline import factory, tiny_config


def with_workspace(p: SearchProblem, budget_kib: float | None) -> SearchProblem:
    # Integer kernels hold a quantized copy of their input: bigger for the early layers.
    ws = {n: {pair: (0 if pair == (32, 32) else (len(p.layers) - i) * 1024) for pair in PAIRS}
          for i, n in enumerate(p.layers)}
    return SearchProblem(p.layers, p.pairs, p.score, p.latency_s, p.weight_bytes, p.other_latency_s, ws, 2048,
                         budget_kib)


def test_peak_is_plan_plus_largest_workspace() -> None:
    p = with_workspace(random_problem(0), None)
    mixed = Candidate({n: ((8, 8) if i == 2 else (32, 32)) for i, n in enumerate(p.layers)})
    assert p.evaluate(mixed).activation_kib == (2048 + 2 * 1024) / 1024
    assert p.evaluate(Candidate.uniform(p.layers, 32, 32)).activation_kib == 2.0
    assert SearchProblem.from_json(p.to_json()).evaluate(mixed) == p.evaluate(mixed)


@pytest.mark.parametrize("budget", [2.0, 3.0, 4.5])
def test_ilp_meets_the_activation_budget_exactly(budget: float) -> None:
    p = with_workspace(random_problem(3), budget)
    sol = solve_ilp(p)
    assert sol is not None and sol.objectives.activation_kib <= budget
    best = min(p.evaluate(c).proxy for c in (Candidate(dict(zip(p.layers, combo)))
                                             for combo in itertools.product(PAIRS, repeat=len(p.layers)))
               if p.evaluate(c).activation_kib <= budget)
    assert sol.objectives.proxy == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_unreachable_activation_budget_names_the_minimum() -> None:
    p = with_workspace(random_problem(1), 1.0)
    with pytest.raises(InfeasibleBudgetError, match=r"raise budget.activation_kib to at least 2.0"):
        p.check_budgets(None, None)


def test_pipeline_front_respects_the_activation_budget(tmp_path: Path) -> None:
    free = run(tiny_config(tmp_path / "free"), factory([]))
    peaks = sorted({c.activation_bytes for c in free.summary.candidates})
    assert len(peaks) > 1, "the table backend must make activation memory depend on the bits"
    budget_kib = (peaks[0] + peaks[-1]) / 2 / 1024
    out = run(tiny_config(tmp_path / "tight", activation_kib=budget_kib), factory([]))
    searched = [c for c in out.summary.candidates if c.kind in ("pareto", "ilp")]
    assert searched and all(c.activation_bytes <= budget_kib * 1024 for c in searched)
    assert "act" in out.run_dir.name
