"""Stage ``hardware cost``: the per-layer cost table of every bit pair the run can evaluate, and the
:class:`~mpsearch.search.SearchProblem` built from it and the sensitivity score."""

from __future__ import annotations

from collections.abc import Mapping

from mpsearch.candidate import Bits, Candidate
from mpsearch.hardware.base import Backend, LayerCostTable
from mpsearch.quant.prepare import PreparedModel
from mpsearch.search import SearchProblem

#: Uniform candidates every run evaluates beside the front.
BASELINES: dict[str, Bits] = {"fp32": (32, 32), "int8": (8, 8)}


def hardware_cost(backend: Backend, prepared: PreparedModel, ranges: Mapping[str, tuple[float, float]],
                  pairs: list[Bits], given: Candidate | None = None) -> LayerCostTable:
    """The backend's cost table for the searched ``pairs``, the :data:`BASELINES`' and ``given``'s."""
    extra = list(given.values()) if given is not None else []
    table_pairs = list(dict.fromkeys([*pairs, *BASELINES.values(), *extra]))
    return backend.cost_table(prepared, ranges, table_pairs)


def search_problem(prepared: PreparedModel, pairs: list[Bits], score: Mapping[str, Mapping[Bits, float]],
                   table: LayerCostTable, groups: list[list[str]], activation_kib: float | None = None,
                   bops_g: float | None = None) -> SearchProblem:
    """The search's tables: ``score`` for the proxy, ``table`` for latency and memory, the budgets the
    search enforces itself (activation memory, BOPs); latency and weight budgets go to the settings."""
    return SearchProblem(
        layers=prepared.layer_names, pairs=pairs, score=score, latency_s=table.layer_latency_s(),
        weight_bytes=table.weight_bytes, other_latency_s=table.other_s,
        workspace_bytes=table.workspace_bytes or None, activation_bytes=table.activation_bytes,
        activation_budget_kib=activation_kib, groups=groups, macs={li.name: li.macs for li in prepared.layers},
        bops_budget_g=bops_g)
