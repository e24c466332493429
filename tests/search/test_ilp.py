from __future__ import annotations

import itertools

import numpy as np
import pytest

from mpsearch.candidate import Candidate
from mpsearch.errors import InfeasibleBudgetError
from mpsearch.search import SearchProblem
from mpsearch.search import compare_fronts
from mpsearch.search.ilp import (
    exact_front_bounds, exact_latency_front, ilp_front, latency_budgets, require_ilp, solve_ilp)

PAIRS = [(32, 32), (8, 8), (8, 4), (4, 8), (4, 4)]


def random_problem(seed: int, n_layers: int = 4, integer: bool = False) -> SearchProblem:
    rng = np.random.default_rng(seed)
    layers = [f"l{i}" for i in range(n_layers)]
    draw = (lambda lo, hi: float(rng.integers(lo, hi))) if integer else (lambda lo, hi: float(rng.uniform(lo, hi)))
    score = {n: {p: (0.0 if p == (32, 32) else draw(0, 10)) for p in PAIRS} for n in layers}
    lat = {n: {p: draw(1, 6) * 1e-3 for p in PAIRS} for n in layers}
    mem = {n: {p: int(draw(1, 9)) * 256 for p in PAIRS} for n in layers}
    return SearchProblem(layers, PAIRS, score, lat, mem, other_latency_s=0.5e-3)


def brute_force(p: SearchProblem, lat: float | None, kib: float | None) -> float | None:
    best = None
    for combo in itertools.product(p.pairs, repeat=len(p.layers)):
        o = p.evaluate(Candidate(dict(zip(p.layers, combo))))
        if (lat is None or o.latency_ms <= lat) and (kib is None or o.weight_kib <= kib):
            best = o.proxy if best is None else min(best, o.proxy)
    return best


@pytest.mark.parametrize("seed", range(8))
def test_ilp_matches_brute_force_and_respects_budgets(seed: int) -> None:
    p = random_problem(seed, integer=seed % 2 == 0)  # integer tables: many ties and budgets hit exactly
    rng = np.random.default_rng(100 + seed)
    fastest = p.extreme(p.latency_s, p.other_latency_s) * 1e3
    smallest = p.extreme(p.weight_bytes) / 1024
    for lat, kib in [(None, None), (fastest + rng.uniform(0, 8), None), (None, smallest + rng.uniform(0, 10)),
                     (fastest + rng.uniform(0, 8), smallest + rng.uniform(0, 10)), (float(round(fastest + 4)), None)]:
        sol = solve_ilp(p, lat, kib)
        expected = brute_force(p, lat, kib)
        if expected is None:
            assert sol is None
            continue
        assert sol is not None
        assert sol.objectives.proxy == pytest.approx(expected, abs=1e-9)
        assert lat is None or sol.objectives.latency_ms <= lat * (1 + 1e-12)
        assert kib is None or sol.objectives.weight_kib <= kib * (1 + 1e-12)


@pytest.mark.parametrize("scale", [1e-7, 1e5])
def test_ilp_is_exact_at_any_scale_of_the_proxy(scale: float) -> None:
    # HiGHS stops within an absolute gap of 1e-6; real proxies are often ~1e-6 in total.
    p = random_problem(7)
    q = SearchProblem(p.layers, p.pairs, {n: {k: v * scale for k, v in row.items()} for n, row in p.score.items()},
                      p.latency_s, p.weight_bytes, p.other_latency_s)
    lat = p.extreme(p.latency_s, p.other_latency_s) * 1e3 + 3.0
    assert solve_ilp(q, lat).objectives.proxy == pytest.approx(brute_force(q, lat, None), rel=1e-9)


def test_ties_pick_the_fastest_optimum() -> None:
    # Every pair has score 0: the proxy cannot separate them, so the ILP must return the fastest.
    p = random_problem(3)
    flat = SearchProblem(p.layers, p.pairs, {n: {q: 0.0 for q in PAIRS} for n in p.layers}, p.latency_s,
                         p.weight_bytes, p.other_latency_s)
    sol = solve_ilp(flat)
    assert sol is not None
    assert sol.objectives.latency_ms == pytest.approx(flat.extreme(flat.latency_s, flat.other_latency_s) * 1e3)


def test_infeasible_budgets() -> None:
    p = random_problem(1)
    fastest = p.extreme(p.latency_s, p.other_latency_s) * 1e3
    assert solve_ilp(p, latency_ms=fastest * 0.99) is None
    assert solve_ilp(p, latency_ms=fastest) is not None  # exactly the minimum is feasible
    with pytest.raises(InfeasibleBudgetError, match="latency budget"):
        require_ilp(p, latency_ms=fastest * 0.99)
    # Each budget alone is reachable, together they are not.
    lat_c, mem_c = {}, {}
    for n in p.layers:
        lat_c[n] = {q: (1e-3 if q == (32, 32) else 5e-3) for q in PAIRS}
        mem_c[n] = {q: (4096 if q == (32, 32) else 512) for q in PAIRS}
    q = SearchProblem(p.layers, PAIRS, p.score, lat_c, mem_c)
    assert solve_ilp(q, 4.0, None) is not None and solve_ilp(q, None, 2.0) is not None
    with pytest.raises(InfeasibleBudgetError, match="together"):
        require_ilp(q, 4.0, 2.0)


def all_points(p: SearchProblem) -> list[tuple[float, float]]:
    return [(o.proxy, o.latency_ms) for o in (p.evaluate(Candidate(dict(zip(p.layers, c))))
                                              for c in itertools.product(p.pairs, repeat=len(p.layers)))]


def pareto_2d(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    pts = sorted(set(points), key=lambda t: (t[1], t[0]))
    out, best = [], float("inf")
    for proxy, lat in pts:
        if proxy < best - 1e-12:
            out.append((proxy, lat))
            best = proxy
    return out


@pytest.mark.parametrize("seed", range(4))
def test_exact_front_enumerates_the_brute_force_front(seed: int) -> None:
    p = random_problem(seed)
    front, complete = exact_latency_front(p)
    assert complete
    got = [(s.objectives.proxy, s.objectives.latency_ms) for s in front]
    want = pareto_2d(all_points(p))
    assert len(got) == len(want)
    for (gp, gl), (wp, wl) in zip(got, want):
        assert gp == pytest.approx(wp) and gl == pytest.approx(wl)


def test_epsilon_sweep_points_are_on_the_exact_front() -> None:
    p = random_problem(5, n_layers=5)
    budgets = latency_budgets(p, 6)
    assert len(budgets) == 6 and budgets == sorted(budgets)
    sweep = ilp_front(p, budgets)
    exact = {(round(s.objectives.proxy, 9), round(s.objectives.latency_ms, 9)) for s in exact_latency_front(p)[0]}
    assert 2 <= len(sweep) <= 6
    for s in sweep:
        assert (round(s.objectives.proxy, 9), round(s.objectives.latency_ms, 9)) in exact
    # A weight budget on the sweep is respected by every point.
    kib = p.extreme(p.weight_bytes) / 1024 + 3
    for s in ilp_front(p, latency_budgets(p, 4, weight_kib=kib), [kib]):
        assert s.objectives.weight_kib <= kib


@pytest.mark.parametrize("seed", range(3))
def test_front_bounds_bracket_the_complete_front_and_close_with_the_grid(seed: int) -> None:
    """HV(inner) <= HV(complete exact front) <= HV(outer), same normalisation; a finer grid narrows the gap."""
    p = random_problem(seed, n_layers=6)
    want = np.array(pareto_2d(all_points(p)))
    gaps = []
    for grid in (5, 40):
        b = exact_front_bounds(p, grid=grid)
        inner = np.array([(s.objectives.proxy, s.objectives.latency_ms) for s in b.inner])
        assert b.ideal == pytest.approx(want.min(axis=0)) and b.nadir == pytest.approx(want.max(axis=0))
        assert all(any(np.allclose(q, w) for w in want) for q in inner)  # every inner point is a front point
        hv = {name: compare_fronts(x, want, ideal=b.ideal, nadir=b.nadir).hypervolume
              for name, x in (("inner", inner), ("outer", b.outer), ("exact", want))}
        assert hv["inner"] <= hv["exact"] + 1e-12 <= hv["outer"] + 2e-12
        gaps.append(hv["outer"] - hv["inner"])
    assert gaps[1] < gaps[0]


def test_front_bounds_of_an_infeasible_budget_is_a_clear_error() -> None:
    p = random_problem(0)
    with pytest.raises(InfeasibleBudgetError, match="relax budget"):
        exact_front_bounds(p, weight_kib=1e-9)
