"""Search: per-layer bit-width choice under latency and memory budgets."""

from mpsearch.search.ilp import (
    FrontBounds, IlpSolution, exact_front_bounds, exact_latency_front, ilp_front, ilp_pick, require_ilp, solve_ilp, sweep_budgets,
)
from mpsearch.search.optuna_search import (
    SAMPLERS,
    FrontComparison,
    HypervolumeComparison,
    SearchSettings,
    compare_fronts,
    feasible_front,
    feasible_points,
    front_comparison,
    run_search,
    spread,
    warm_start_candidates,
)
from mpsearch.search.journal import FlockJournalLock, journal_storage
from mpsearch.search.groups import check_candidate, layer_groups, merge_groups, residual_groups, tied_weight_groups
from mpsearch.search.space import (
    OBJECTIVES, Objectives, SearchProblem, activation_bits, bit_pairs, objective_names, pair_label,
)

__all__ = [
    "FrontComparison", "HypervolumeComparison", "IlpSolution", "Objectives", "SAMPLERS", "SearchProblem", "SearchSettings",
    "FrontBounds", "activation_bits", "bit_pairs", "compare_fronts", "exact_front_bounds", "exact_latency_front",
    "feasible_front", "feasible_points", "front_comparison", "ilp_front", "ilp_pick",
    "pair_label", "require_ilp", "run_search", "solve_ilp", "spread", "sweep_budgets", "warm_start_candidates",
    "OBJECTIVES", "check_candidate", "layer_groups", "merge_groups", "objective_names", "residual_groups",
    "tied_weight_groups", "FlockJournalLock", "journal_storage",
]
