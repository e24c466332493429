"""Search: per-layer bit-width choice under latency and memory budgets."""

from mpsearch.search.optuna_search import (
    SearchSettings,
    feasible_front,
    run_search,
    spread,
    warm_start_candidates,
)
from mpsearch.search.space import Objectives, SearchProblem, bit_pairs, pair_label

__all__ = [
    "Objectives", "SearchProblem", "SearchSettings", "bit_pairs", "feasible_front", "pair_label",
    "run_search", "spread", "warm_start_candidates",
]
