"""Layer groups (layers that take one precision) in the search space, the ILP, the warm start and the
candidate checks; BOPs as a budget and as an objective; the config fields behind both."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from mpsearch.candidate import Candidate
from mpsearch.config import RunConfig, validate
from mpsearch.errors import CandidateError, ConfigError, InfeasibleBudgetError
from mpsearch.pipeline import load_candidate
from mpsearch.quant.prepare import prepare_model
from mpsearch.search import SearchProblem, SearchSettings, feasible_front, run_search, solve_ilp
from mpsearch.search.groups import layer_groups, merge_groups, residual_groups, tied_weight_groups
from mpsearch.search.optuna_search import candidate_from_params, warm_start_candidates
from mpsearch.testing import tiny_resnet
from tests.search.test_ilp import random_problem


class TiedMLP(nn.Module):
    """fc2 reuses fc1's weight tensor (weight tying), fc3 is free."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.fc2.weight = self.fc1.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def grouped(p: SearchProblem, groups: list[list[str]], bops_budget_g: float | None = None,
            macs: dict[str, int] | None = None) -> SearchProblem:
    macs = macs or {n: 1000 * (i + 1) for i, n in enumerate(p.layers)}
    return SearchProblem(p.layers, p.pairs, p.score, p.latency_s, p.weight_bytes, p.other_latency_s,
                         groups=groups, macs=macs, bops_budget_g=bops_budget_g)


def brute_force(p: SearchProblem, lat: float | None = None, kib: float | None = None) -> Candidate | None:
    """The lowest-proxy candidate that respects the groups and every budget, by enumeration."""
    best = None
    for combo in itertools.product(p.pairs, repeat=len(p.variables)):
        bits = {n: pair for (_, members), pair in zip(p.variables, combo) for n in members}
        cand = Candidate({n: bits[n] for n in p.layers})
        o = p.evaluate(cand)
        if (lat is None or o.latency_ms <= lat) and (kib is None or o.weight_kib <= kib) and \
                (p.bops_budget_g is None or o.bops_g <= p.bops_budget_g):
            if best is None or o.proxy < p.evaluate(best).proxy:
                best = cand
    return best


# --- where groups come from -------------------------------------------------------------------------

def test_tied_weights_are_found_on_the_users_model() -> None:
    model = TiedMLP().eval()
    prepared = prepare_model(model, (1, 8))
    assert tied_weight_groups(model, prepared.layer_names) == [["fc1", "fc2"]]
    assert layer_groups(model, prepared.graph_module, prepared.layer_names) == [["fc1", "fc2"]]
    assert tied_weight_groups(tiny_resnet(), prepare_model(tiny_resnet(), (1, 1, 8, 8)).layer_names) == []


def test_residual_groups_are_the_layers_feeding_each_add() -> None:
    prepared = prepare_model(tiny_resnet(), (1, 1, 8, 8))
    # TinyResNet: relu(conv2(...) + down(x)); the stem reaches the add only through conv1/conv2, not directly.
    assert residual_groups(prepared.graph_module, prepared.layer_names) == [["conv2", "down"]]
    assert layer_groups(tiny_resnet(), prepared.graph_module, prepared.layer_names, residual=True) == \
        [["conv2", "down"]]
    assert layer_groups(tiny_resnet(), prepared.graph_module, prepared.layer_names) == []


def test_user_groups_by_name_and_regex_merge_when_they_overlap() -> None:
    layers = ["stem", "conv1", "conv2", "down", "fc"]
    prepared = prepare_model(tiny_resnet(), (1, 1, 8, 8))
    assert prepared.layer_names == layers
    got = layer_groups(tiny_resnet(), prepared.graph_module, layers, [["conv1", "fc"], ["re:conv\\d"]])
    assert got == [["conv1", "conv2", "fc"]]  # transitive: conv1~fc and conv1~conv2
    assert merge_groups(layers, [["down", "stem"], ["fc"]]) == [["stem", "down"]]


@pytest.mark.parametrize(("groups", "message"), [
    ([["conv1", "conv9"]], r"search.groups\[0\]: unknown layer 'conv9'; use a quantizable layer name "
                           r"\(e.g. stem, conv1, conv2, down, fc\)"),
    ([["re:layer.*"]], r"pattern 're:layer.\*' matches no quantizable layer; the layers are: stem, conv1"),
])
def test_unknown_group_members_are_one_line_errors(groups, message) -> None:
    prepared = prepare_model(tiny_resnet(), (1, 1, 8, 8))
    with pytest.raises(ConfigError, match=message) as e:
        layer_groups(tiny_resnet(), prepared.graph_module, prepared.layer_names, groups)
    assert "\n" not in str(e.value)


# --- the search space, the ILP and the warm start -----------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_ilp_picks_one_pair_per_group_and_is_exact(seed: int) -> None:
    p = grouped(random_problem(seed, n_layers=5), [["l0", "l3"], ["l1", "l4"]])
    assert [m for _, m in p.variables] == [["l0", "l3"], ["l1", "l4"], ["l2"]]
    fastest = p.extreme(p.latency_s, p.other_latency_s) * 1e3
    for lat in (None, fastest + 2.0, fastest + 6.0):
        sol, best = solve_ilp(p, lat), brute_force(p, lat)
        assert (sol is None) == (best is None)
        if sol is None:
            continue
        p.check_candidate(sol.candidate)  # the group members share their pair
        assert sol.candidate["l0"] == sol.candidate["l3"] and sol.candidate["l1"] == sol.candidate["l4"]
        assert sol.objectives.proxy == pytest.approx(p.evaluate(best).proxy, abs=1e-9)
        assert lat is None or sol.objectives.latency_ms <= lat * (1 + 1e-12)


def test_group_aware_extremes_name_the_reachable_minimum() -> None:
    # l0 is cheapest at W4A4 (1 ms), l1 at W32A32 (1 ms); tied together their best joint pair costs more.
    pairs = [(32, 32), (4, 4)]
    p = SearchProblem(["l0", "l1"], pairs, {n: {q: 0.0 for q in pairs} for n in ("l0", "l1")},
                      {"l0": {(32, 32): 5e-3, (4, 4): 1e-3}, "l1": {(32, 32): 1e-3, (4, 4): 5e-3}},
                      {n: {q: 100 for q in pairs} for n in ("l0", "l1")}, groups=[["l0", "l1"]])
    with pytest.raises(InfeasibleBudgetError, match=r"raise budget.latency_ms to at least 6.000"):
        p.check_budgets(5.0, None)
    assert solve_ilp(p, 5.9) is None and solve_ilp(p, 6.0) is not None


def test_optuna_has_one_parameter_per_group_and_every_trial_respects_it(tmp_path: Path) -> None:
    p = grouped(random_problem(2, n_layers=5), [["l0", "l3"], ["l1", "l2", "l4"]])
    warm = warm_start_candidates(p)
    assert warm and all(c["l0"] == c["l3"] and len({c["l1"], c["l2"], c["l4"]}) == 1 for c in warm)
    study = run_search(p, SearchSettings("nsga2", 40, 0), tmp_path / "s.journal", progress=False)
    done = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(done) == 40
    for t in done:
        assert set(t.params) == {"l0+l3", "l1+l2+l4"}  # one categorical per group: two variables in all
        p.check_candidate(candidate_from_params(t.params, p))
    # The warm start ran first, as enqueued, and the front is made of grouped candidates.
    assert [candidate_from_params(t.params, p) for t in study.trials[:len(warm)]] == warm
    assert all(c["l0"] == c["l3"] for _, c in feasible_front(study, p))


def test_a_candidate_that_splits_a_group_is_rejected(tmp_path: Path) -> None:
    layers = ["stem", "conv1", "conv2", "down", "fc"]
    good = {n: [8, 8] for n in layers}
    bad = {**good, "down": [4, 8]}
    (tmp_path / "good.json").write_text(Candidate(good).to_json())
    (tmp_path / "bad.json").write_text(Candidate(bad).to_json())
    assert load_candidate(str(tmp_path / "good.json"), layers, [["conv2", "down"]]) == Candidate(good)
    with pytest.raises(CandidateError, match=r"layers conv2, down must share one precision .* conv2=W8A8, "
                                             r"down=W4A8; give them the same \[w_bits, a_bits\]"):
        load_candidate(str(tmp_path / "bad.json"), layers, [["conv2", "down"]])
    p = grouped(random_problem(0), [["l1", "l2"]])
    with pytest.raises(CandidateError, match="l1, l2 must share"):
        p.check_candidate(Candidate({"l0": (8, 8), "l1": (8, 8), "l2": (4, 4), "l3": (8, 8)}))


# --- BOPs ------------------------------------------------------------------------------------------------

def test_bops_are_macs_times_both_bit_widths() -> None:
    p = grouped(random_problem(0), [], macs={"l0": 10**6, "l1": 2 * 10**6, "l2": 0, "l3": 5})
    cand = Candidate({"l0": (8, 8), "l1": (4, 8), "l2": (32, 32), "l3": (32, 32)})
    assert p.evaluate(cand).bops_g == pytest.approx((10**6 * 64 + 2 * 10**6 * 32 + 5 * 1024) / 1e9)
    again = SearchProblem.from_json(grouped(random_problem(0), [["l0", "l2"]], 0.5).to_json())
    assert again.groups == [["l0", "l2"]] and again.bops_budget_g == 0.5 and again.macs["l1"] == 2000


@pytest.mark.parametrize("seed", range(4))
def test_ilp_meets_a_bops_budget_with_latency_and_groups_exactly(seed: int) -> None:
    base = random_problem(seed, n_layers=5)
    macs = {n: 10**6 * (i + 1) for i, n in enumerate(base.layers)}
    free = grouped(base, [["l0", "l4"]], macs=macs)
    lo, hi = free.extreme("bops_g"), free.bops_g(Candidate.uniform(base.layers, 32, 32))
    budget = lo + (hi - lo) * np.random.default_rng(seed).uniform(0.05, 0.4)
    p = grouped(base, [["l0", "l4"]], budget, macs)
    lat = p.extreme(p.latency_s, p.other_latency_s) * 1e3 + 4.0
    for lat_budget in (None, lat):
        sol, best = solve_ilp(p, lat_budget), brute_force(p, lat_budget)
        assert (sol is None) == (best is None)
        if sol is None:
            continue
        assert sol.objectives.bops_g <= budget * (1 + 1e-12)
        assert sol.objectives.proxy == pytest.approx(p.evaluate(best).proxy, abs=1e-9)
    # The BOPs budget binds: without it the optimum needs more bit-operations.
    assert solve_ilp(free).objectives.bops_g > budget


def test_unreachable_bops_budget_names_the_minimum() -> None:
    p = grouped(random_problem(1), [], bops_budget_g=1e-9, macs={n: 10**6 for n in random_problem(1).layers})
    with pytest.raises(InfeasibleBudgetError, match=r"BOPs budget 1e-09 G is below .* raise budget.bops_g to at "
                                                    r"least 0.064"):
        p.check_budgets(None, None)


def test_search_honours_a_bops_budget_and_can_minimise_bops(tmp_path: Path) -> None:
    base = random_problem(3, n_layers=5)
    macs = {n: 10**6 * (i + 1) for i, n in enumerate(base.layers)}
    free = grouped(base, [], macs=macs)
    budget = (free.extreme("bops_g") + free.bops_g(Candidate.uniform(base.layers, 32, 32))) / 4
    p = grouped(base, [["l1", "l2"]], budget, macs)
    settings = SearchSettings("nsga2", 40, 0, objectives=("proxy", "bops", "latency"))
    study = run_search(p, settings, tmp_path / "s.journal", progress=False)
    assert study.metric_names == ["proxy", "latency_ms", "bops_g"]  # canonical order
    done = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    for t in done:
        o = p.evaluate(candidate_from_params(t.params, p))
        assert t.values == pytest.approx([o.proxy, o.latency_ms, o.bops_g])
        # The constraint Optuna stores is the BOPs excess over the budget.
        assert t.constraints == {"bops_g": pytest.approx(o.bops_g - budget)}
    front = feasible_front(study, p)
    assert front and all(p.evaluate(c).bops_g <= budget for _, c in front)
    # The warm start has ILP picks at several BOPs budgets, not only uniform candidates.
    warm = warm_start_candidates(p, bops=True, memory=False)
    assert len({round(p.evaluate(c).bops_g, 12) for c in warm}) > len(p.pairs)


# --- config ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value", "message"), [
    ("groups", [["conv1"], []], r"search.groups\[1\]=\[\] must be a non-empty list"),
    ("groups", [["re:conv(("]], r"search.groups\[0\]: 're:conv\(\(' is not a valid regular expression"),
    ("objectives", ["latency", "memory"], r"must include 'proxy'"),
    ("objectives", ["proxy", "accuracy"], r"'accuracy' is unknown; use some of proxy, latency, memory"),
])
def test_config_rejects_bad_groups_and_objectives(field: str, value, message: str) -> None:
    cfg = RunConfig()
    setattr(cfg.search, field, value)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_config_bops_budget_and_unchanged_hash_by_default() -> None:
    cfg = RunConfig()
    plain = cfg.content_hash()
    cfg.budget.bops_g = -1.0
    with pytest.raises(ConfigError, match=r"budget.bops_g=-1.0 must be positive"):
        validate(cfg)
    cfg.budget.bops_g = 2.5
    assert validate(cfg).default_run_name().split("-")[-2] == "bops2.5G"
    assert cfg.content_hash() != plain
    # New fields left at their defaults keep old runs' folders (and their finished studies).
    assert RunConfig().content_hash() == plain


# --- the whole run ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_pipeline_honours_groups_and_a_bops_budget_end_to_end(tmp_path: Path) -> None:
    from mpsearch.pipeline import run
    from mpsearch.report import candidates_frame, load_summary
    from mpsearch.testing import table_backend_factory, tiny_run_config

    prepared = prepare_model(tiny_resnet(), (1, 1, 8, 8))
    fp32_bops = sum(li.macs for li in prepared.layers) * 32 * 32 / 1e9
    budget = fp32_bops / 4
    given = tmp_path / "given.json"
    given.write_text(Candidate({n: ((4, 8) if n in ("conv1", "conv2", "down") else (8, 8))
                                for n in prepared.layer_names}).to_json())
    cfg = tiny_run_config(tmp_path, search__groups=[["re:conv[12]"]], search__group_residual=True,
                          budget__bops_g=budget, search__n_trials=30, search__proxy_validation=0,
                          search__measure_front=3, search__sensitivity="fisher", search__sensitivity_samples=16,
                          candidate=str(given))
    out = run(cfg, table_backend_factory)
    group = ["conv1", "conv2", "down"]  # conv1~conv2 from the pattern, conv2~down from the residual add
    assert out.summary.layer_groups == [group]
    assert load_summary(out.run_dir).layer_groups == [group]
    frame = candidates_frame(out.summary)
    searched = frame[frame["kind"].isin(["pareto", "ilp"])]
    assert len(searched) >= 2
    for _, row in searched.iterrows():
        assert len({row[n] for n in group}) == 1, f"{row['label']} splits the group"
        assert row["bops_g"] <= budget * (1 + 1e-12)
    fp32 = frame[frame["label"] == "fp32"].iloc[0]
    assert fp32["bops_g"] == pytest.approx(fp32_bops) and fp32["bops_g"] > budget  # the budget binds
    report = (out.run_dir / "report.md").read_text()
    assert "conv1 [g1]" in report and "down [g1]" in report and "GBOPs" in report
    assert "bops" in out.run_dir.name


def test_hydra_overrides_compose_groups_objectives_and_bops() -> None:
    from tests.test_config import _compose

    cfg = _compose(['search.groups=[[layer1.0.conv1,layer1.0.conv2],["re:layer3\\..*"]]', "search.group_residual=true",
                    "search.objectives=[proxy,latency,bops]", "budget.bops_g=1.5"])
    validate(cfg)
    assert cfg.search.groups == [["layer1.0.conv1", "layer1.0.conv2"], ["re:layer3\\..*"]]
    assert cfg.search.objectives == ["proxy", "latency", "bops"] and cfg.budget.bops_g == 1.5
    assert cfg.search.group_residual is True
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_activation_memory_can_be_an_objective(tmp_path: Path) -> None:
    from tests.search.test_activation_budget import with_workspace

    p = with_workspace(random_problem(4), None)
    settings = SearchSettings("random", 12, 0, objectives=("activation", "proxy"), warm_start="uniform")
    assert settings.metric_names() == ["proxy", "activation_kib"]
    study = run_search(p, settings, tmp_path / "s.journal", progress=False)
    for t in study.get_trials(states=[optuna.trial.TrialState.COMPLETE]):
        o = p.evaluate(candidate_from_params(t.params, p))
        assert t.values == pytest.approx([o.proxy, o.activation_kib])
