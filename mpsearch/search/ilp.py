"""Exact baseline: the additive proxy minimised under budgets by integer linear programming (HAWQ-V3).

One binary ``x[g, p]`` per layer group and bit pair (a layer not in a group is its own; a group's
costs are its members' summed), exactly one pair per group; minimise Σ score·x subject to
Σ latency·x ≤ latency budget − other latency, Σ weight bytes·x ≤ weight budget and Σ BOPs·x ≤ BOPs
budget (any combination, or none), solved with SciPy's HiGHS MILP. An activation-memory budget fixes
the pairs whose kernel workspace does not fit at 0. Every solution is *lexicographic*: among the proxy-optimal
candidates it takes the fastest (then the smallest), so each point is non-dominated and an
ε-constraint sweep over budgets yields points of the exact proxy-vs-cost front.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array, csr_array

from mpsearch.candidate import Candidate
from mpsearch.errors import InfeasibleBudgetError, MPSearchError
from mpsearch.search.space import Objectives, SearchProblem

log = logging.getLogger(__name__)

#: Constraint rows are scaled so their largest coefficient is 1 (larger scales make HiGHS err or return
#: wrong optima); HiGHS stops at a 1e-4 relative gap by default, so the gap is closed.
_ROW_SCALE = 1.0
_GAP = 1e-9


@dataclass(frozen=True)
class IlpSolution:
    """An optimal candidate at one budget and its objectives."""

    candidate: Candidate
    objectives: Objectives
    latency_ms: float | None  # the budgets it was solved for
    weight_kib: float | None


class _Model:
    """The MILP's fixed parts: variable layout, the one-pair-per-layer rows and the cost rows."""

    def __init__(self, problem: SearchProblem) -> None:
        self.problem = problem
        groups = [m for _, m in problem.variables]  # one choice per layer group (a lone layer is its own)
        L, P = len(groups), len(problem.pairs)
        self.n = L * P

        def cost(table: str, k: float = 1.0) -> np.ndarray:
            return np.array([problem.group_cost(m, p, table) * k for m in groups for p in problem.pairs], dtype=float)

        self.score, self.lat_ms, self.kib = cost("score"), cost("latency_s", 1e3), cost("weight_bytes", 1 / 1024)
        self.bops = cost("bops_g")
        rows = np.repeat(np.arange(L), P)
        # Pairs whose kernel workspace breaks the activation budget (at any member) are fixed at 0.
        self.upper = np.array([1.0 if all(problem.allowed(n, p) for n in m) else 0.0
                               for m in groups for p in problem.pairs])
        self.one_hot = LinearConstraint(
            csr_array(coo_array((np.ones(self.n), (rows, np.arange(self.n))), shape=(L, self.n))), 1, 1)

    def solve(self, cost: np.ndarray, rows: list[tuple[np.ndarray, float]], time_limit: float | None
              ) -> np.ndarray | None:
        """Minimise ``cost·x`` subject to ``r·x <= ub`` for every row; the rounded solution meets each row
        exactly (HiGHS accepts small violations, so a violated row is tightened and solved again)."""
        bounds = [ub for _, ub in rows]
        sizes = [max(abs(ub), float(np.abs(r).max()), 1e-300) for r, ub in rows]  # each row's own scale
        for attempt in range(6):
            x = self._solve_once(cost, [(r, ub) for (r, _), ub in zip(rows, bounds)], time_limit)
            if x is None:
                return None
            # Over by more than float summation error (1e-12 relative) counts as a violation.
            over = [float(r @ x) - ub - 1e-12 * size for (r, ub), size in zip(rows, sizes)]
            if all(v <= 0 for v in over):
                return x
            # Tighten by a growing margin: this excludes at most candidates within ~1e-9..1e-4 (relative)
            # of the budget, the solver's own resolution.
            step = 10.0 ** (attempt - 9)
            bounds = [b - max(2 * v, step * size) if v > 0 else b for b, v, size in zip(bounds, over, sizes)]
        raise MPSearchError("the ILP solver kept returning solutions that break a budget by rounding; "
                            "rescale the cost table or relax the budget slightly")

    def _solve_once(self, cost: np.ndarray, rows: list[tuple[np.ndarray, float]], time_limit: float | None
                    ) -> np.ndarray | None:
        constraints = [self.one_hot]
        for r, ub in rows:
            top = float(np.abs(r).max())
            k = _ROW_SCALE / top if top > 0 else 1.0
            constraints.append(LinearConstraint((r * k).reshape(1, -1), -np.inf, ub * k))
        options = {"disp": False, "mip_rel_gap": _GAP, **({"time_limit": time_limit} if time_limit else {})}
        # HiGHS also stops within an absolute gap of 1e-6: scale the objective so that is relative.
        top = float(np.abs(cost).max())
        cost = cost / top if top > 0 else cost
        res = milp(cost, constraints=constraints, integrality=np.ones(self.n), bounds=Bounds(0, self.upper),
                   options=options)
        if res.status == 4:  # HiGHS "solve error": its presolve is the usual culprit, so solve without it
            res = milp(cost, constraints=constraints, integrality=np.ones(self.n), bounds=Bounds(0, self.upper),
                       options={**options, "presolve": False})
        if res.status == 2:  # infeasible
            return None
        if res.x is None:
            raise MPSearchError(f"the ILP solver stopped without a solution ({res.message}); "
                                "raise its time limit or shrink the search space")
        return np.round(res.x).astype(bool)

    def candidate(self, x: np.ndarray) -> Candidate:
        P = len(self.problem.pairs)
        picks = x.reshape(len(self.problem.variables), P).argmax(axis=1)
        bits = {n: self.problem.pairs[i] for (_, members), i in zip(self.problem.variables, picks) for n in members}
        return Candidate({n: bits[n] for n in self.problem.layers})


def _budget_rows(model: _Model, latency_ms: float | None, weight_kib: float | None) -> list[tuple[np.ndarray, float]]:
    rows = []
    if latency_ms is not None:
        rows.append((model.lat_ms, latency_ms - model.problem.other_latency_s * 1e3))
    if weight_kib is not None:
        rows.append((model.kib, weight_kib))
    if model.problem.bops_budget_g is not None:
        rows.append((model.bops, model.problem.bops_budget_g))
    return rows


def _lexicographic(model: _Model, latency_ms: float | None, weight_kib: float | None,
                   time_limit: float | None) -> Candidate | None:
    rows = _budget_rows(model, latency_ms, weight_kib)
    x = model.solve(model.score, rows, time_limit)
    if x is None:
        return None
    best = float(model.score @ x)
    # Second and third stages: keep the optimal proxy (to solver tolerance), then take the fastest and
    # smallest, so the pick is a Pareto point rather than an arbitrary one of several ties.
    tol = 1e-12 * max(abs(best), float(np.abs(model.score).max()), 1e-300)
    for cost in (model.lat_ms, model.kib):
        refined = model.solve(cost, rows + [(model.score, best + tol)], time_limit)
        if refined is None:  # numerical corner: keep the previous stage's optimum
            break
        x = refined
        rows = rows + [(cost, float(cost @ x) * (1 + 1e-12))]
    return model.candidate(x)


def solve_ilp(problem: SearchProblem, latency_ms: float | None = None, weight_kib: float | None = None,
              time_limit: float | None = None) -> IlpSolution | None:
    """The candidate with the lowest proxy within the budgets, or None if none meets them.

    Budgets are in the units of :class:`Objectives` (ms of predicted latency including
    ``other_latency_s``, KiB of weights); None means unconstrained. Among equal-proxy optima the
    fastest, then the smallest, is returned.
    """
    cand = _lexicographic(_Model(problem), latency_ms, weight_kib, time_limit)
    if cand is None:
        return None
    return IlpSolution(cand, problem.evaluate(cand), latency_ms, weight_kib)


def require_ilp(problem: SearchProblem, latency_ms: float | None = None, weight_kib: float | None = None,
                time_limit: float | None = None) -> IlpSolution:
    """Like :func:`solve_ilp`, raising :class:`InfeasibleBudgetError` when the budgets cannot be met."""
    problem.check_budgets(latency_ms, weight_kib)  # names the single budget that is out of reach
    sol = solve_ilp(problem, latency_ms, weight_kib, time_limit)
    if sol is None:
        active = [f"{k}={v:g}" for k, v in (("budget.latency_ms", latency_ms), ("budget.weight_kib", weight_kib),
                                            ("budget.activation_kib", problem.activation_budget_kib),
                                            ("budget.bops_g", problem.bops_budget_g)) if v is not None]
        raise InfeasibleBudgetError(f"no candidate meets {', '.join(active)} together; relax one of them")
    return sol


def sweep_budgets(problem: SearchProblem, k: int, axis: str = "latency", latency_ms: float | None = None,
                  weight_kib: float | None = None) -> list[float]:
    """``k`` budgets on ``axis`` ("latency" in ms or "weight" in KiB), evenly spaced from the cheapest
    candidate to the cost of the proxy optimum (a larger budget buys nothing).

    The other axis's budget constrains both ends; ``axis``'s own budget caps the range. Empty when
    the budgets cannot be met.
    """
    if axis not in ("latency", "weight"):
        raise ValueError(f"axis must be 'latency' or 'weight', not {axis!r}")
    model = _Model(problem)
    cost, other = (model.lat_ms, (None, weight_kib)) if axis == "latency" else (model.kib, (latency_ms, None))
    cheapest = _lexicographic_min(model, cost, *other)
    best = _lexicographic(model, *other, None)
    if cheapest is None or best is None:
        return []
    attr = "latency_ms" if axis == "latency" else "weight_kib"
    lo, hi = getattr(problem.evaluate(cheapest), attr), getattr(problem.evaluate(best), attr)
    cap = latency_ms if axis == "latency" else weight_kib
    if cap is not None:
        hi = min(hi, cap)
    if k <= 1 or hi <= lo:
        return [hi]
    return [float(v) for v in np.linspace(lo, hi, k)]


def latency_budgets(problem: SearchProblem, k: int, weight_kib: float | None = None,
                    latency_ms: float | None = None) -> list[float]:
    """``k`` latency budgets from the fastest candidate to the proxy optimum's latency (under ``weight_kib``)."""
    return sweep_budgets(problem, k, "latency", latency_ms, weight_kib)


def _lexicographic_min(model: _Model, cost: np.ndarray, latency_ms: float | None,
                       weight_kib: float | None) -> Candidate | None:
    """The cheapest candidate on ``cost`` within the budgets, and among those the lowest proxy."""
    rows = _budget_rows(model, latency_ms, weight_kib)
    x = model.solve(cost, rows, None)
    if x is None:
        return None
    x2 = model.solve(model.score, rows + [(cost, float(cost @ x) * (1 + 1e-12))], None)
    return model.candidate(x if x2 is None else x2)


def ilp_front(problem: SearchProblem, latency_budgets_ms: Sequence[float | None],
              weight_budgets_kib: Sequence[float | None] = (None,),
              time_limit: float | None = None) -> list[IlpSolution]:
    """ε-constraint sweep: the lexicographic ILP optimum at every (latency, weight) budget pair.

    Returns the distinct, mutually non-dominated solutions sorted by latency (points of the exact
    front on (proxy, latency, weight)); infeasible budget pairs are skipped.
    """
    model = _Model(problem)
    found: dict[Candidate, IlpSolution] = {}
    for lat in latency_budgets_ms:
        for mem in weight_budgets_kib:
            cand = _lexicographic(model, lat, mem, time_limit)
            if cand is not None and cand not in found:
                found[cand] = IlpSolution(cand, problem.evaluate(cand), lat, mem)
    sols = list(found.values())
    pts = [(s.objectives.proxy, s.objectives.latency_ms, s.objectives.weight_kib) for s in sols]
    keep = [s for s, a in zip(sols, pts)
            if not any(all(y <= x for x, y in zip(a, b)) and b != a for b in pts)]
    return sorted(keep, key=lambda s: (s.objectives.latency_ms, s.objectives.proxy))


def exact_latency_front(problem: SearchProblem, weight_kib: float | None = None,
                        latency_ms: float | None = None, max_points: int = 2000,
                        time_limit: float | None = None) -> tuple[list[IlpSolution], bool]:
    """Every point of the exact proxy-vs-latency front (under ``weight_kib``), by ε-constraint steps.

    Starting from the unconstrained proxy optimum, each step solves again with the latency budget
    just below the previous point's latency, until no candidate is faster. Returns the points sorted
    by latency and whether the enumeration completed (False when ``max_points`` was reached).
    """
    model = _Model(problem)
    points: list[IlpSolution] = []
    budget = latency_ms
    start = time.perf_counter()
    while len(points) < max_points:
        cand = _lexicographic(model, budget, weight_kib, time_limit)
        if cand is None:
            break
        obj = problem.evaluate(cand)
        points.append(IlpSolution(cand, obj, budget, weight_kib))
        budget = obj.latency_ms * (1 - 1e-12)
    else:
        log.info("exact front: stopped at %d points", max_points)
        return sorted(points, key=lambda s: s.objectives.latency_ms), False
    log.info("exact front: %d points in %.1f s", len(points), time.perf_counter() - start)
    return sorted(points, key=lambda s: s.objectives.latency_ms), True


@dataclass(frozen=True)
class FrontBounds:
    """The exact proxy-vs-latency front bracketed from ``grid`` ε-constraint solves (see :func:`exact_front_bounds`).

    ``inner``: exact-front points (a subset of the complete front: its hypervolume is a lower bound).
    ``outer``: corner points that dominate every point of the complete front (an upper bound).
    """

    inner: list[IlpSolution]
    outer: np.ndarray  # (proxy, latency_ms) rows
    ideal: np.ndarray  # the complete front's extremes: (min proxy, min latency) ...
    nadir: np.ndarray  # ... and (max proxy, max latency)


def exact_front_bounds(problem: SearchProblem, weight_kib: float | None = None, latency_ms: float | None = None,
                       grid: int = 200, time_limit: float | None = None) -> FrontBounds:
    """Bracket the complete proxy-vs-latency front (under ``weight_kib``) between two point sets.

    A front of many layers has thousands of points (enumerating them one ε-step at a time takes
    minutes); its hypervolume is pinned down far more cheaply. Solve at ``grid`` latency budgets
    b_0 < ... < b_n, evenly spaced from the fastest candidate to the proxy optimum's latency; the
    solution s_i at b_i has the least proxy of any candidate within b_i. Every front point with latency
    in (b_i, b_{i+1}] therefore has proxy >= proxy(s_{i+1}) and is dominated by the corner
    (proxy(s_{i+1}), b_i), and the fastest points by (proxy(s_0), b_0). The solutions themselves are
    front points. So HV(inner) <= HV(complete front) <= HV(outer), and the gap closes as ``grid`` grows.
    """
    budgets = sweep_budgets(problem, max(grid, 2), "latency", latency_ms, weight_kib)
    if not budgets:
        raise InfeasibleBudgetError("no candidate meets the budgets; relax budget.latency_ms / budget.weight_kib")
    model = _Model(problem)
    solved = [(b, c) for b in budgets if (c := _lexicographic(model, b, weight_kib, time_limit)) is not None]
    sols = [IlpSolution(c, problem.evaluate(c), b, weight_kib) for b, c in solved]
    first = sols[0].objectives
    outer = [(first.proxy, first.latency_ms)] + [(s.objectives.proxy, prev.latency_ms) for prev, s in zip(sols, sols[1:])]
    front = sorted({s.candidate: s for s in reversed(sols)}.values(), key=lambda s: s.objectives.latency_ms)
    ideal = np.array([front[-1].objectives.proxy, front[0].objectives.latency_ms])
    nadir = np.array([front[0].objectives.proxy, front[-1].objectives.latency_ms])
    return FrontBounds(front, np.array(outer, dtype=float), ideal, nadir)


def ilp_pick(problem: SearchProblem, latency_ms: float | None, weight_kib: float | None,
             front: Sequence[Candidate] = ()) -> tuple[str, IlpSolution] | None:
    """The exact-ILP candidate a run evaluates for real beside its front, with its label.

    At the run's budgets when it has any (label ``"ilp"``); otherwise at the predicted latency of the
    middle of ``front`` (label ``"ilp@<budget>ms"``), so the pick is comparable with a searched one.
    None when there is nothing to pick (no budget and an empty front, or infeasible budgets).
    """
    if latency_ms is None and weight_kib is None:
        if not front:
            return None
        mid = sorted(front, key=lambda c: problem.evaluate(c).latency_ms)[len(front) // 2]
        budget = problem.evaluate(mid).latency_ms
        sol = solve_ilp(problem, budget, None)
        return None if sol is None else (f"ilp@{budget:.3f}ms", sol)
    sol = solve_ilp(problem, latency_ms, weight_kib)
    return None if sol is None else ("ilp", sol)
