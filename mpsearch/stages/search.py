"""Stage ``search``: the study on the problem's predicted costs, its feasible front, the candidates
evaluated for real, and the exact ILP on the same proxy and budgets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna

from mpsearch.candidate import Candidate
from mpsearch.config import BudgetConfig, SearchConfig
from mpsearch.errors import MPSearchError
from mpsearch.search import (
    FrontComparison, IlpSolution, SearchProblem, SearchSettings, feasible_front, front_comparison, ilp_pick,
    run_search, spread,
)


@dataclass
class Searched:
    """What the ``search`` stage hands on.

    Attributes:
        settings: The study's settings (its metric names go into the report).
        front: Feasible non-dominated ``(trial, candidate)`` pairs, by latency.
        chosen: The ``search.measure_front`` of them spread along latency, evaluated for real.
        comparison: The exact ILP's front beside the search's, for the report.
        pick: The ILP candidate evaluated for real, with its label, or None.
    """

    settings: SearchSettings
    front: list[tuple[optuna.trial.FrozenTrial, Candidate]]
    chosen: list[tuple[optuna.trial.FrozenTrial, Candidate]]
    comparison: FrontComparison
    pick: tuple[str, IlpSolution] | None


def search_settings(search_cfg: SearchConfig, budget: BudgetConfig, study_name: str) -> SearchSettings:
    """The study's settings from ``cfg.search`` and ``cfg.budget``; ``study_name``: the run folder's
    name, used only with a shared database (``search.storage``), which holds many runs' studies."""
    s = search_cfg
    return SearchSettings(s.sampler, s.n_trials, s.seed, budget.latency_ms, budget.weight_kib, s.memory_objective,
                          warm_start=s.warm_start, warm_budgets=s.ilp_budgets, storage=s.storage, workers=s.workers,
                          objectives=tuple(s.objectives) if s.objectives else None,
                          # a shared database holds many runs' studies; a run's own journal just one
                          study_name=study_name if s.storage else "mpsearch")


def search(problem: SearchProblem, settings: SearchSettings, journal: Path, measure_front: int, ilp_budgets: int,
           progress: bool = False, proxy: Callable[[Candidate], float] | None = None) -> Searched:
    """Run (or resume from ``journal``) the study and pick what the evaluation measures.

    Raises:
        MPSearchError: No trial met the budgets.
    """
    study = run_search(problem, settings, journal, progress, proxy=proxy)
    front = feasible_front(study, problem)
    if not front:
        raise MPSearchError("the search found no candidate within the budgets; relax budget.* or "
                            "raise search.n_trials")
    chosen = spread(front, measure_front)
    # The exact ILP on the same proxy and budgets: its front for the report, its pick measured for real.
    comparison = front_comparison(study, problem, settings, ilp_budgets)
    pick = ilp_pick(problem, settings.latency_ms, settings.weight_kib, [c for _, c in chosen])
    return Searched(settings, front, chosen, comparison, pick)
