"""Each stage of :func:`mpsearch.pipeline.run` on its own, with the tiny model and the table backend."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mpsearch import interrupt
from mpsearch.candidate import Candidate
from mpsearch.config import RunConfig
from mpsearch.errors import CandidateError, ConfigError, HardwareError, Interrupted
from mpsearch.hardware.base import Measurement
from mpsearch.hardware.estimate import EstimateBackend
from mpsearch.search import SearchSettings, solve_ilp
from mpsearch.sensitivity import ADDITIVE_FALLBACK, SensitivityResult
from mpsearch.stages import (
    BASELINES, Loaded, ProxyValidation, StageTimer, StepBack, Todo, cached_accuracy, check_failure_rate,
    configured_profile, default_backend, estimate_sensitivity, evaluate, evaluate_accuracy, hardware_cost, learn, load,
    open_run_folder, report, report_notes, sample_batch, search, search_problem, search_settings, to_evaluate,
    validate_proxy, wants_learning,
)
from mpsearch.testing import TableBackend, tiny_run_config

LAYERS = ["stem", "conv1", "conv2", "down", "fc"]
PAIRS = [(32, 32), (8, 8), (4, 8), (4, 4)]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> RunConfig:
    return tiny_run_config(tmp_path_factory.mktemp("stages"))


@pytest.fixture(scope="module")
def loaded(cfg: RunConfig) -> Loaded:
    return load(cfg.model, cfg.data)


@pytest.fixture(scope="module")
def ranges(loaded: Loaded) -> dict[str, tuple[float, float]]:
    from mpsearch.quant.calibration import calibrate

    return calibrate(loaded.prepared.graph_module, loaded.layers, loaded.calib)


@pytest.fixture(scope="module")
def sens(loaded, ranges, tmp_path_factory):
    return estimate_sensitivity("hutchinson", loaded.prepared, ranges, loaded.calib, PAIRS, 32, 64, 0,
                                tmp_path_factory.mktemp("sens-cache"))


@pytest.fixture(scope="module")
def table(loaded, ranges):
    return hardware_cost(TableBackend(), loaded.prepared, ranges, PAIRS)


@pytest.fixture(scope="module")
def searched(loaded, sens, table, tmp_path_factory):
    problem = search_problem(loaded.prepared, PAIRS, sens.score, table, loaded.groups)
    settings = SearchSettings("nsga2", 30, 0, None, None, True, warm_budgets=4)
    return search(problem, settings, tmp_path_factory.mktemp("search") / "study.journal", 3, 4)


# -- the stage lines and timings -------------------------------------------------------------------------------


def test_timer_logs_each_stage_and_adds_up_its_time(caplog) -> None:
    timer = StageTimer()
    with caplog.at_level(logging.INFO, logger="mpsearch.pipeline"):
        for _ in range(2):
            with timer.stage("search"):
                pass
    # the chaos driver reads exactly these lines, from the logger the run always used
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("mpsearch.pipeline", "stage: search")] * 2
    assert list(timer.timings) == ["search"] and timer.timings["search"] >= 0


def test_timer_names_the_stage_a_ctrl_c_stopped() -> None:
    timer = StageTimer()
    with pytest.raises(Interrupted) as info, timer.stage("evaluation"):
        raise KeyboardInterrupt
    assert info.value.stage == "evaluation" and "evaluation" in timer.timings
    with pytest.raises(Interrupted) as info, timer.stage("report"):
        raise Interrupted("search")  # already named: kept
    assert info.value.stage == "search"
    with pytest.raises(ValueError), timer.stage("load"):  # an error that is not a stop request stays itself
        raise ValueError("bad")


def test_timer_turns_an_error_raised_during_a_stop_request_into_interrupted(monkeypatch) -> None:
    monkeypatch.setattr(interrupt, "requested", lambda: True)
    with pytest.raises(Interrupted) as info, StageTimer().stage("hardware cost"):
        raise RuntimeError("TVMError: interrupted in C++")
    assert info.value.stage == "hardware cost"


# -- load ------------------------------------------------------------------------------------------------------


def test_load_prepares_the_model_and_both_splits(cfg: RunConfig, loaded: Loaded) -> None:
    assert loaded.layers == LAYERS and loaded.given is None and loaded.groups == []
    assert sum(len(y) for _, y in loaded.calib) == cfg.data.calib_samples
    assert sum(len(y) for _, y in loaded.test) == cfg.data.test_samples
    assert all(len(y) <= cfg.data.batch_size for _, y in loaded.test)
    assert not loaded.model.training and loaded.prepared.inputs[0].shape[1:] == (1, 8, 8)


def test_load_reads_groups_and_a_given_candidate(cfg: RunConfig, tmp_path: Path) -> None:
    bits = {n: [8, 8] for n in LAYERS}
    (tmp_path / "c.json").write_text(json.dumps(bits))
    out = load(cfg.model, cfg.data, [["conv1", "conv2"]], False, str(tmp_path / "c.json"))
    assert out.groups == [["conv1", "conv2"]] and out.given == Candidate({n: (8, 8) for n in LAYERS})
    bits["conv1"] = [4, 4]  # splits the group
    (tmp_path / "c.json").write_text(json.dumps(bits))
    with pytest.raises(CandidateError, match="layers conv1, conv2 must share one precision"):
        load(cfg.model, cfg.data, [["conv1", "conv2"]], False, str(tmp_path / "c.json"))


def test_load_rejects_data_that_does_not_fit_the_model(cfg: RunConfig) -> None:
    model = type(cfg.model)(**{**vars(cfg.model), "input_shape": [1, 1, 9, 9]})
    with pytest.raises(ConfigError, match=r"input 0 is float32 \[1, 8, 8\] per sample"):
        load(model, cfg.data)


# -- device ----------------------------------------------------------------------------------------------------


def test_configured_profile_applies_the_run_overrides(cfg: RunConfig, tmp_path: Path) -> None:
    hw = type(cfg.hw_profile)(name="host_cpu", cost="estimated", trials_per_task=3, threads=1)
    profile = configured_profile(hw)
    assert profile.estimated and profile.tuning.trials_per_task == 3 and profile.threads == 1
    assert configured_profile(RunConfig()).tuning.trials_per_task != 3  # a whole config: its hw_profile group
    assert isinstance(default_backend(profile, tmp_path, False), EstimateBackend)


# -- sensitivity -----------------------------------------------------------------------------------------------


def test_sensitivity_scores_every_layer_and_pair(loaded, sens) -> None:
    assert sens.joint is None and sens.result.estimator == "hutchinson"
    assert len(sens.batches) == 1 and len(sens.batches[0][1]) == 32  # the first 32 calibration samples
    assert torch.equal(sens.batches[0][0], torch.cat([x for x, _ in loaded.calib])[:32])
    assert set(sens.score) == set(LAYERS) and all(set(s) == set(PAIRS) for s in sens.score.values())
    assert all(sens.score[n][(4, 4)] > sens.score[n][(8, 8)] for n in LAYERS)  # fewer bits, more damage
    assert all(sens.score[n][(32, 32)] == 0 for n in LAYERS)


def test_a_joint_sensitivity_keeps_an_additive_score_for_the_ilp(loaded, ranges, tmp_path: Path) -> None:
    out = estimate_sensitivity("calib_kl", loaded.prepared, ranges, loaded.calib, PAIRS, 16, 64, 0, tmp_path)
    assert out.joint is not None and out.joint.name == "calib_kl"
    assert out.result.estimator == ADDITIVE_FALLBACK and set(out.score) == set(LAYERS)
    worse = out.joint(Candidate.uniform(LAYERS, 4, 4))
    assert worse > out.joint(Candidate.uniform(LAYERS, 8, 8)) >= 0


def test_sample_batch_takes_the_first_samples_as_one_batch() -> None:
    data = [(torch.arange(4.0), torch.arange(4)), (torch.arange(4.0, 8.0), torch.arange(4, 8))]
    [(x, y)] = sample_batch(data, 6)
    assert x.tolist() == [0, 1, 2, 3, 4, 5] and y.tolist() == [0, 1, 2, 3, 4, 5]


# -- hardware cost ---------------------------------------------------------------------------------------------


def test_hardware_cost_covers_searched_baseline_and_given_pairs(loaded, ranges) -> None:
    given = Candidate({n: (2, 8) if n == "conv2" else (8, 8) for n in LAYERS})
    table = hardware_cost(TableBackend(), loaded.prepared, ranges, [(4, 4), (8, 8)], given)
    assert table.pairs == [(4, 4), (8, 8), (32, 32), (2, 8)]  # in order, once each
    assert set(BASELINES.values()) <= set(table.pairs)


def test_search_problem_takes_its_tables_from_the_cost_table(loaded, sens, table) -> None:
    problem = search_problem(loaded.prepared, PAIRS, sens.score, table, [["conv1", "conv2"]], 2.0, 0.5)
    assert problem.layers == LAYERS and problem.pairs == PAIRS and problem.score is sens.score
    assert problem.latency_s == table.layer_latency_s() and problem.weight_bytes == table.weight_bytes
    assert problem.other_latency_s == table.other_s and problem.activation_bytes == table.activation_bytes
    assert problem.workspace_bytes == table.workspace_bytes
    assert problem.activation_budget_kib == 2.0 and problem.bops_budget_g == 0.5
    assert problem.macs == {li.name: li.macs for li in loaded.prepared.layers}
    assert problem.groups == [["conv1", "conv2"]]


# -- search ----------------------------------------------------------------------------------------------------


def test_search_settings_come_from_the_search_and_budget_groups(cfg: RunConfig) -> None:
    s = type(cfg.search)(sampler="tpe", n_trials=7, seed=3, objectives=["proxy", "latency"], ilp_budgets=5)
    b = type(cfg.budget)(latency_ms=1.5, weight_kib=2.5)
    settings = search_settings(s, b, "run-a")
    assert (settings.sampler, settings.n_trials, settings.seed, settings.latency_ms, settings.weight_kib) == \
        ("tpe", 7, 3, 1.5, 2.5)
    assert settings.objectives == ("proxy", "latency") and settings.warm_budgets == 5
    assert settings.study_name == "mpsearch"  # a run's own journal holds one study
    s.storage = "sqlite:///x.db"
    assert search_settings(s, b, "run-a").study_name == "run-a"  # a shared database: one study per run


def test_search_returns_a_feasible_front_and_the_ilp_pick(searched) -> None:
    assert searched.front and len(searched.chosen) == 3
    lat = [t.values[1] for t, _ in searched.front]
    assert lat == sorted(lat)  # by latency
    assert all(c in [f for _, f in searched.front] for _, c in searched.chosen)
    assert searched.chosen[0] == searched.front[0] and searched.chosen[-1] == searched.front[-1]
    assert searched.pick is not None and searched.pick[0].startswith("ilp")
    assert searched.comparison.fronts  # the ILP's front, for the report


# -- proxy validation ------------------------------------------------------------------------------------------


def test_proxy_validation_correlates_each_estimator_with_the_real_drop(cfg, loaded, ranges, sens, tmp_path) -> None:
    s = type(cfg.search)(proxy_validation=4, proxy_validation_samples=40, proxy_estimators=["hutchinson", "fisher"],
                         sensitivity_samples=32)
    out = validate_proxy(s, loaded.prepared, PAIRS, ranges, sens, loaded.calib, loaded.test, 64, tmp_path)
    v = out.validation
    assert v["n"] == 4 and v["test_samples"] == 40 and set(v["spearman"]) == {"hutchinson", "fisher"}
    assert list(out.results) == ["hutchinson", "fisher"] and out.results["hutchinson"] is sens.result
    # the drop is real, on the first 40 test samples
    first = [(torch.cat([x for x, _ in loaded.test])[:40], torch.cat([y for _, y in loaded.test])[:40])]
    point = v["points"][0]
    cand = next(c for c in _random(loaded, 4) if c.key() == point["key"])
    fp = evaluate_accuracy(loaded.prepared, Candidate.uniform(LAYERS, 32, 32), ranges, first)
    assert point["acc_drop_pts"] == pytest.approx(100 * (fp - evaluate_accuracy(loaded.prepared, cand, ranges, first)))


def test_proxy_validation_off_hands_on_the_search_estimator_only(cfg, loaded, ranges, sens, tmp_path) -> None:
    s = type(cfg.search)(proxy_validation=0)
    out = validate_proxy(s, loaded.prepared, PAIRS, ranges, sens, loaded.calib, loaded.test, 64, tmp_path)
    assert out == ProxyValidation(None, {"hutchinson": sens.result})


def _random(loaded, n):
    from mpsearch.sensitivity import random_candidates

    return random_candidates(loaded.layers, PAIRS, n, 0)


# -- evaluation ------------------------------------------------------------------------------------------------


def test_to_evaluate_lists_front_baselines_given_and_ilp_pick() -> None:
    a, b = Candidate.uniform(LAYERS, 4, 4), Candidate.uniform(LAYERS, 4, 8)
    pick = ("ilp@1ms", SimpleNamespace(candidate=b))
    todo = to_evaluate([(SimpleNamespace(number=7), a), (SimpleNamespace(number=2), b)], LAYERS, a, pick)
    assert [(t.label, t.kind, t.trial) for t in todo] == [
        ("pareto-0", "pareto", 7), ("pareto-1", "pareto", 2), ("fp32", "baseline", None),
        ("int8", "baseline", None), ("given", "baseline", None), ("ilp@1ms", "ilp", None)]
    assert todo[2].candidate == Candidate.uniform(LAYERS, 32, 32) and todo[-1].candidate == b
    assert [t.label for t in to_evaluate([], LAYERS)] == ["fp32", "int8"]


def test_evaluate_reports_accuracy_proxy_and_latency(loaded, ranges, sens, table) -> None:
    todo = to_evaluate([], LAYERS) + [Todo("mixed", "pareto", 1, Candidate.uniform(LAYERS, 4, 4))]
    accuracy = {c.candidate: 0.1 * i for i, c in enumerate(todo)}
    out = evaluate(todo, accuracy.__getitem__, TableBackend(), loaded.prepared, ranges, table, sens.score, None, 0.5)
    assert [e.label for e in out.candidates] == ["fp32", "int8", "mixed"] and out.notes == []
    mixed = out.candidates[-1]
    assert mixed.accuracy == pytest.approx(0.2) and mixed.trial == 1
    assert mixed.proxy == pytest.approx(sum(sens.score[n][(4, 4)] for n in LAYERS))
    assert mixed.measured_latency_ms == pytest.approx(1.02 * mixed.predicted_latency_ms)  # the table backend's error
    assert mixed.weight_bytes == table.predict_weight_bytes(mixed.candidate)
    joint = evaluate(todo, accuracy.__getitem__, TableBackend(), loaded.prepared, ranges, table, sens.score,
                     lambda c: 42.0, 0.5)
    assert [e.proxy for e in joint.candidates] == [42.0] * 3


def test_evaluation_shows_a_progress_bar_over_the_accuracy_runs(loaded, ranges, sens, table, capsys) -> None:
    todo = to_evaluate([], LAYERS)
    evaluate(todo, lambda c: 0.5, TableBackend(), loaded.prepared, ranges, table, sens.score, None, 0.5, progress=True)
    bar = capsys.readouterr().err
    assert "evaluate accuracy" in bar and f"0/{len(todo)}" in bar  # the bar counts the candidates
    evaluate(todo, lambda c: 0.5, TableBackend(), loaded.prepared, ranges, table, sens.score, None, 0.5)
    assert "evaluate accuracy" not in capsys.readouterr().err  # progress off: nothing


def test_failed_measurements_are_notes_until_the_failure_rate(loaded, ranges, sens, table) -> None:
    todo = to_evaluate([], LAYERS)
    broken = TableBackend(fail=[todo[1].candidate.key()])
    out = evaluate(todo, lambda c: 0.5, broken, loaded.prepared, ranges, table, sens.score, None, 0.5)
    assert out.notes == ["int8: not measured (run failed: injected failure)"]
    assert out.candidates[1].measured_latency_ms is None and out.candidates[0].measured_latency_ms is not None
    with pytest.raises(HardwareError, match="1 of 2 end-to-end measurements failed .*int8"):
        evaluate(todo, lambda c: 0.5, broken, loaded.prepared, ranges, table, sens.score, None, 0.4)


def test_evaluation_notes_a_machine_that_changed_speed_since_the_cost_table(loaded, ranges, sens, table) -> None:
    """The baselines were timed end to end when the cost table was calibrated; timed again 2x slower (or
    faster), the machine changed in between and the predictions are off by that: a note says so."""
    import copy

    todo = to_evaluate([], LAYERS)
    steady = evaluate(todo, lambda c: 0.5, TableBackend(), loaded.prepared, ranges, table, sens.score, None, 0.5)
    now = {e.candidate.key(): e.measured_latency_ms for e in steady.candidates}
    for factor, note in [(1.1, None), (2.0, "2.00x slower"), (0.25, "4.00x faster")]:
        then = copy.deepcopy(table)
        then.calibration["measured_ms"] = {key: ms / factor for key, ms in now.items()}
        out = evaluate(todo, lambda c: 0.5, TableBackend(), loaded.prepared, ranges, then, sens.score, None, 0.5)
        drift = [n for n in out.notes if "the cost table was calibrated" in n]
        assert (drift == []) if note is None else (len(drift) == 1 and f"the machine ran {note}" in drift[0])
    assert "measured_ms" not in table.calibration or steady.notes == []  # a table without them: no note


class _Spell(TableBackend):
    """Times the set ``slow`` x slower in its first ``calls`` calls (a spell of a slower machine state)."""

    def __init__(self, slow: float, calls: int) -> None:
        super().__init__()
        self.slow, self.left, self.fresh = slow, calls, []

    def measure_many(self, prepared, candidates, ranges, fresh=False):
        self.fresh.append(fresh)
        out = super().measure_many(prepared, candidates, ranges, fresh)
        if self.left > 0:
            self.left -= 1
            out = [Measurement.from_samples([s * self.slow for s in m.samples]) for m in out]
        return out


def test_a_set_timed_in_a_slow_spell_is_timed_again_and_the_fastest_call_kept(loaded, ranges, sens, table) -> None:
    """On a 2-vCPU VM every 2-thread TVM model ran 1.5-2x slower for minutes at a time (FP32 more than
    INT8): a set timed DRIFT x slower than at calibration is timed again, fresh, and the fastest call kept."""
    import copy

    todo = to_evaluate([], LAYERS)
    steady = evaluate(todo, lambda c: 0.5, TableBackend(), loaded.prepared, ranges, table, sens.score, None, 0.5)
    then = copy.deepcopy(table)
    then.calibration["measured_ms"] = {e.candidate.key(): e.measured_latency_ms for e in steady.candidates}
    spell = _Spell(1.7, calls=1)
    out = evaluate(todo, lambda c: 0.5, spell, loaded.prepared, ranges, then, sens.score, None, 0.5)
    assert spell.fresh == [False, True] and out.notes == []  # the second call, at the calibration's speed, kept
    assert [e.measured_latency_ms for e in out.candidates] == pytest.approx(
        [e.measured_latency_ms for e in steady.candidates])
    stuck = _Spell(1.7, calls=5)  # slow every time: timed 1 + RETIMES times, then the note says so
    out = evaluate(todo, lambda c: 0.5, stuck, loaded.prepared, ranges, then, sens.score, None, 0.5)
    assert stuck.fresh == [False, True, True] and len(out.notes) == 1
    assert out.notes[0].startswith("the machine ran 1.70x slower during this evaluation, in the fastest of 3 timings")


def _proxy_accuracy(problem, drop_of_int8: float):
    """A stand-in for real accuracy that falls with the proxy: uniform INT8 loses ``drop_of_int8`` points."""
    scale = drop_of_int8 / 100 / problem.evaluate(Candidate.uniform(LAYERS, 8, 8)).proxy
    return lambda c: 0.9 - scale * problem.evaluate(c).proxy


def test_step_back_finds_the_fastest_ilp_candidate_that_keeps_the_accuracy(loaded, sens, table) -> None:
    problem = search_problem(loaded.prepared, PAIRS, sens.score, table, loaded.groups)
    accuracy = _proxy_accuracy(problem, 2.0)  # INT8 2 points below FP32: nothing evaluated keeps 1 point
    # the front: all 4-bit, and all FP32 but its most sensitive layer at 4 bits (slow, and it fails too)
    worst = max(LAYERS, key=lambda n: sens.score[n][(4, 4)])
    slow = Candidate({n: (4, 4) if n == worst else (32, 32) for n in LAYERS})
    todo = to_evaluate([(SimpleNamespace(number=0), Candidate.uniform(LAYERS, 4, 4)),
                        (SimpleNamespace(number=1), slow)], LAYERS)
    accs = [accuracy(t.candidate) for t in todo]
    ms = lambda c: table.predict_latency(c) * 1e3  # noqa: E731
    assert accuracy(slow) < 0.89 and ms(slow) > ms(Candidate.uniform(LAYERS, 8, 8))
    calls = []
    counted = lambda c: calls.append(c) or accuracy(c)  # noqa: E731
    added, added_accs, note = StepBack(problem, 1.0, 6).candidates(todo, accs, counted, ms)
    assert len(calls) <= 6 and added and all(t.kind == "ilp" and t.label.startswith("ilp@") for t in added)
    assert added_accs == [accuracy(t.candidate) for t in added] and len({t.label for t in added}) == len(added)
    held = [t.candidate for t, a in zip(added, added_accs) if a >= 0.9 - 0.01]
    assert held and min(map(ms, held)) < ms(Candidate.uniform(LAYERS, 32, 32))  # a quantized one, faster than FP32
    # what a fine sweep of the ILP's budgets finds: the bisection lands within its last step of it
    fp32_ms = ms(Candidate.uniform(LAYERS, 32, 32))
    sweep = [solve_ilp(problem, b, None) for b in np.linspace(ms(todo[0].candidate), fp32_ms, 200)]
    best = min(s.objectives.latency_ms for s in sweep if s is not None and accuracy(s.candidate) >= 0.89)
    assert best <= min(map(ms, held)) <= best * 1.1
    assert note.startswith("No quantized candidate of the search kept accuracy within 1 point of FP32 (90.00%")
    assert "is the fastest of them that keeps it (predicted)." in note
    # one that keeps it already (INT8 half a point below): no step
    keep = _proxy_accuracy(problem, 0.5)
    assert StepBack(problem, 1.0, 6).candidates(todo, [keep(t.candidate) for t in todo], keep, ms) == ([], [], None)
    assert StepBack(problem, 1.0, 0).candidates(todo, accs, accuracy, ms) == ([], [], None)  # off
    # a failing ILP candidate bounds the budgets from below: every step is dearer than it
    failing = [s.candidate for s in sweep if s is not None and accuracy(s.candidate) < 0.89][-1]
    with_ilp = [*todo, Todo("ilp", "ilp", None, failing)]
    added, _, _ = StepBack(problem, 1.0, 5).candidates(with_ilp, [*accs, accuracy(failing)], accuracy, ms)
    assert added and all(float(t.label[4:-2]) > ms(failing) for t in added)


def test_evaluate_measures_the_step_back_candidates_with_the_rest(loaded, ranges, sens, table) -> None:
    problem = search_problem(loaded.prepared, PAIRS, sens.score, table, loaded.groups)
    accuracy = _proxy_accuracy(problem, 3.0)
    todo = to_evaluate([], LAYERS)
    out = evaluate(todo, accuracy, TableBackend(), loaded.prepared, ranges, table, sens.score, None, 0.5,
                   step_back=StepBack(problem, 1.0, 3))
    stepped = out.candidates[len(todo):]
    assert stepped and all(e.kind == "ilp" and e.measured_latency_ms is not None for e in stepped)
    assert [e.accuracy for e in stepped] == [accuracy(e.candidate) for e in stepped]
    assert out.notes[0].startswith("No quantized candidate") and "int8 87.00%" not in out.notes[0]


def test_check_failure_rate_counts_only_failures() -> None:
    ok, bad = SimpleNamespace(ok=True, error=None), SimpleNamespace(ok=False, error="timeout\nmore")
    check_failure_rate([("a",), ("b",)], [ok, bad], 0.5)
    with pytest.raises(HardwareError, match=r"1 of 2 .*\(e.g. b: timeout\), more than search.max_failure_rate=0.4"):
        check_failure_rate([("a",), ("b",)], [ok, bad], 0.4)


def test_cached_accuracy_evaluates_each_candidate_once(loaded, ranges, tmp_path, monkeypatch) -> None:
    from mpsearch.stages import accuracy as module

    calls = []
    real = module.evaluate_accuracy
    monkeypatch.setattr(module, "evaluate_accuracy", lambda *a: calls.append(1) or real(*a))
    cand = Candidate.uniform(LAYERS, 4, 4)
    first = cached_accuracy(loaded.prepared, ranges, loaded.test, tmp_path)(cand)
    assert cached_accuracy(loaded.prepared, ranges, loaded.test, tmp_path)(cand) == first and calls == [1]


# -- learned quantization --------------------------------------------------------------------------------------


def test_learn_trains_the_mixed_candidates_and_writes_their_patches(cfg, loaded, ranges, table, tmp_path) -> None:
    s = type(cfg.search)(ptq="adaround", ptq_iters=5)
    assert wants_learning(s) and not wants_learning(type(cfg.search)())
    todo = to_evaluate([(SimpleNamespace(number=0), Candidate.uniform(LAYERS, 4, 4))], LAYERS)
    evaluated = evaluate(todo, cached_accuracy(loaded.prepared, ranges, loaded.test, tmp_path), TableBackend(),
                         loaded.prepared, ranges, table, {n: {} for n in LAYERS}, None, 0.5).candidates
    (tmp_path / "run").mkdir()  # the run folder exists by then
    notes = learn(s, loaded.prepared, ranges, loaded.calib, loaded.test, evaluated, tmp_path / "run", tmp_path)
    mixed, fp32, int8 = evaluated
    assert mixed.accuracy_rtn is not None and fp32.accuracy_rtn is None and int8.accuracy_rtn is None  # baselines kept
    assert [p.name for p in (tmp_path / "run" / "candidates").iterdir()] == ["pareto-0.learned.pt"]
    assert notes[0].startswith("Learned quantization (adaround") and notes[1].startswith("pareto-0 (W4A4x5)")


# -- run folder and report -------------------------------------------------------------------------------------


def test_open_run_folder_writes_the_config(tmp_path: Path) -> None:
    open_run_folder(tmp_path / "run", {"a": 1}, None)
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"a": 1}


def test_report_writes_the_artifacts_and_the_notes(cfg, loaded, ranges, sens, table, searched, tmp_path) -> None:
    todo = to_evaluate(searched.chosen, LAYERS, None, searched.pick)
    evaluated = evaluate(todo, lambda c: 0.5, TableBackend(), loaded.prepared, ranges, table, sens.score, None,
                         0.5).candidates
    run_dir = tmp_path / "run"
    open_run_folder(run_dir, cfg.to_dict(), None)
    timings = {"search": 1.0}
    out = report(run_dir, cfg.to_dict(), "tiny", cfg.search, configured_profile(cfg), TableBackend(), table,
                 loaded.prepared, sens.result, None, searched, ProxyValidation(None, {"hutchinson": sens.result}),
                 [["conv1", "conv2"]], evaluated, ["first note"], timings)
    for name in ("report.md", "pareto.csv", "cost_table.json", "sensitivity.json", "candidates/fp32.json",
                 f"candidates/{searched.pick[0]}.json"):
        assert (run_dir / name).is_file(), name
    assert SensitivityResult.from_json((run_dir / "sensitivity.json").read_text()) == sens.result
    s = out.summary
    assert s.notes[0] == "first note" and s.notes[1] == "Latencies: TVM-compiled code on table, mean over 7 " \
        "repeats of 20 calls, candidates measured interleaved in rounds so that machine drift hits all alike; " \
        "kernels tuned with MetaSchedule (replay-spaces, 8 trials per kernel). The ± is the standard deviation " \
        "over repeats: on a shared 2-core VM it is large."
    assert s.notes[-1] == searched.comparison.note() and "Layer groups (one precision each, one search variable " \
        "each): conv1 + conv2." in s.notes
    assert s.timings_s is timings and s.candidates is evaluated and s.layer_groups == [["conv1", "conv2"]]
    assert set(s.sensitivity) and out.table is table and out.files["report_md"].is_file()


def test_report_notes_name_the_estimated_source_and_a_joint_proxy(cfg, loaded, table, searched, tmp_path) -> None:
    profile = configured_profile(type(cfg.hw_profile)(name="host_cpu", cost="estimated"))
    backend = EstimateBackend(profile, tmp_path)
    joint = SimpleNamespace(name="calib_kl", computed=3, seconds=1.25)
    notes = report_notes(backend, profile, table, cfg.search, searched, joint, loaded.prepared, None,
                         {"n": 2, "test_samples": 9, "spearman": {"hutchinson": 0.5, "fisher": None}})
    assert notes[0] == f"Latencies for {backend.describe()}." and not any(n.startswith("Layer groups") for n in notes)
    assert any("The proxy objective is calib_kl" in n and "3 computed this run in 1.2 s" in n for n in notes)
    assert notes[-1].endswith("with that drop: hutchinson 0.50, fisher n/a.")
    assert f"{len(searched.front)} feasible Pareto candidates, 3 evaluated for real" in " ".join(notes)
