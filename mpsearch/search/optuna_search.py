"""Constrained multi-objective search with Optuna, stored in a journal file so runs resume.

Objectives: the sensitivity proxy (predicted loss increase), the predicted latency and (by default)
the weight memory, all minimized; the latency and weight-memory budgets are constraints (``Trial.set_constraint``), which Optuna's samplers and Pareto helpers honour.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from mpsearch.candidate import Candidate
from mpsearch.errors import ConfigError
from mpsearch.search.space import SearchProblem, pair_label

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchSettings:
    sampler: str = "nsga2"
    n_trials: int = 400
    seed: int = 0
    latency_ms: float | None = None
    weight_kib: float | None = None
    memory_objective: bool = True


def _constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    return list(trial.constraints.values())


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=40)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=40)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"unknown sampler {name!r}; use nsga2, tpe or random")


def candidate_from_params(params: dict[str, str], problem: SearchProblem) -> Candidate:
    labels = {pair_label(p): p for p in problem.pairs}
    return Candidate({n: labels[params[n]] for n in problem.layers})


def warm_start_candidates(problem: SearchProblem, n_lagrangian: int = 8) -> list[Candidate]:
    """Uniform baselines, then sensitivity-guided picks trading proxy against latency and memory."""
    out = [Candidate.uniform(problem.layers, *p) for p in problem.pairs]
    scores = [v for row in problem.score.values() for v in row.values() if v > 0]
    lats = [v for row in problem.latency_s.values() for v in row.values()]
    mems = [v for row in problem.weight_bytes.values() for v in row.values()]
    if scores:
        lat_scale = np.median(scores) / max(np.median(lats), 1e-12)
        mem_scale = np.median(scores) / max(np.median(mems), 1e-12)
        for lam in np.geomspace(0.01, 100, n_lagrangian):
            out.append(problem.lagrangian_pick(lam * lat_scale))
            out.append(problem.lagrangian_pick(0.0, lam * mem_scale))
    unique: dict[Candidate, None] = {}
    for c in out:
        unique.setdefault(c, None)
    return list(unique)


def run_search(problem: SearchProblem, settings: SearchSettings, storage_path: Path,
               progress: bool = True) -> optuna.Study:
    """Run (or resume) the study in ``storage_path`` until it holds ``n_trials`` finished trials."""
    problem.check_budgets(settings.latency_ms, settings.weight_kib)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(storage_path)))
    study = optuna.create_study(
        study_name="mpsearch", storage=storage, load_if_exists=True,
        directions=["minimize"] * (3 if settings.memory_objective else 2),
        sampler=make_sampler(settings.sampler, settings.seed),
    )
    study.set_metric_names(["proxy", "latency_ms", "weight_kib"][: len(study.directions)])
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if done:
        log.info("resuming study %s: %d finished trial(s) kept", storage_path, len(done))
    # Unfinished trials of a killed run are marked FAIL so samplers ignore them.
    for t in study.trials:
        if t.state == optuna.trial.TrialState.RUNNING:
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    if not study.trials:
        for cand in warm_start_candidates(problem):
            study.enqueue_trial({n: pair_label(cand[n]) for n in problem.layers}, skip_if_exists=True)
    remaining = settings.n_trials - len(done)
    if remaining <= 0:
        return study
    choices = [pair_label(p) for p in problem.pairs]

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        params = {n: trial.suggest_categorical(n, choices) for n in problem.layers}
        obj = problem.evaluate(candidate_from_params(params, problem))
        # Constraints (feasible when <= 0) are stored with the trial, so samplers and resumed runs see them.
        if settings.latency_ms is not None:
            trial.set_constraint("latency_ms", obj.latency_ms - settings.latency_ms)
        if settings.weight_kib is not None:
            trial.set_constraint("weight_kib", obj.weight_kib - settings.weight_kib)
        trial.set_user_attr("weight_kib", obj.weight_kib)
        if settings.memory_objective:
            return obj.proxy, obj.latency_ms, obj.weight_kib
        return obj.proxy, obj.latency_ms

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=remaining, show_progress_bar=progress)
    return study


def feasible_front(study: optuna.Study, problem: SearchProblem) -> list[tuple[optuna.trial.FrozenTrial, Candidate]]:
    """Feasible, non-dominated trials (Optuna's own Pareto computation), unique candidates, by latency."""
    seen: set[Candidate] = set()
    front = []
    for t in sorted(study.best_trials, key=lambda t: t.values[1]):
        if any(c > 0 for c in _constraints(t)):
            continue
        cand = candidate_from_params(t.params, problem)
        if cand not in seen:
            seen.add(cand)
            front.append((t, cand))
    return front


def spread(items: list, k: int) -> list:
    """``k`` items evenly spaced along a sorted list, ends included."""
    if len(items) <= k:
        return list(items)
    idx = sorted({int(round(i)) for i in np.linspace(0, len(items) - 1, k)})
    return [items[i] for i in idx]
