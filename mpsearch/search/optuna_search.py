"""Constrained multi-objective search with Optuna, in persistent storage so runs resume and scale out.

Objectives: the sensitivity proxy (predicted loss increase), the predicted latency and (by default)
the weight memory, all minimized; ``objectives`` picks others (peak activation memory, BOPs). Budgets
on latency, weight memory, activation memory and BOPs, in any combination, are constraints
(``Trial.set_constraint``), which Optuna's samplers and Pareto helpers honour. Each layer group
(:mod:`.groups`) is one categorical parameter.

Storage: a journal file in the run folder by default (crash-safe appends; several processes on one
machine may share it), or any Optuna RDB URL (``postgresql://...``) so worker processes on many
machines share one study. ``workers > 1`` starts that many local processes (this one included); more
can join from other machines with ``mpsearch-worker <search_spec.json>`` (see :mod:`.worker`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from mpsearch.candidate import Candidate
from mpsearch.errors import ConfigError, MPSearchError
from mpsearch.search.space import OBJECTIVES, Objectives, SearchProblem, objective_names, pair_label

log = logging.getLogger(__name__)

SAMPLERS = ("nsga2", "nsga3", "tpe", "random")
WARM_STARTS = ("ilp", "uniform", "none")
#: Seconds between a worker's heartbeats on RDB storage, and after which a silent worker's trial is failed.
HEARTBEAT_S, GRACE_S = 10, 60
RELATIVE_KEY = 0xC401D  # re-seeds the random state of a trial's joint (relative) draw


@dataclass(frozen=True)
class SearchSettings:
    """How to search. ``storage``: None = the journal file given to :func:`run_search`; a URL with
    ``://`` = Optuna RDB storage (e.g. ``postgresql://user@host/db``). ``workers``: local processes."""

    sampler: str = "nsga2"
    n_trials: int = 400
    seed: int = 0
    latency_ms: float | None = None
    weight_kib: float | None = None
    memory_objective: bool = True
    warm_start: str = "ilp"  # ilp: uniform + exact-ILP picks at several budgets; uniform; none
    warm_budgets: int = 8  # ILP picks per budget axis
    storage: str | None = None
    study_name: str = "mpsearch"
    workers: int = 1
    # Minimised objectives, some of proxy/latency/memory/activation/bops; None: proxy, latency (+ memory).
    objectives: tuple[str, ...] | None = None

    def objective_names(self) -> list[str]:
        return objective_names(self.objectives, self.memory_objective)

    def metric_names(self) -> list[str]:
        """The study's metric names, e.g. ``["proxy", "latency_ms", "weight_kib"]``."""
        return [OBJECTIVES[o] for o in self.objective_names()]


def _constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    return list(trial.constraints.values())


class ResumableSampler(optuna.samplers.BaseSampler):
    """``inner`` with its random state re-seeded from ``(seed, finished trials)`` for every trial.

    A sampler's random state lives in the process, not in the study: a run resumed after a crash
    would otherwise start it afresh and draw other trials than the uninterrupted run. Re-seeded from
    the number of COMPLETE trials before each trial (and, for a parameter drawn on its own, from its
    name too, so a trial killed half-way through its suggestions draws the rest as before), one
    process's trial k draws the same parameters in either run; the samplers' other state (NSGA-II's
    generations and parents) is kept in the study. So a resumed run reaches the same study and the
    same report. With several workers the order of trials is not deterministic anyway.
    """

    def __init__(self, inner: optuna.samplers.BaseSampler, seed: int) -> None:
        self.inner, self.seed = inner, seed
        self._n_complete: dict[int, int] = {}

    def __str__(self) -> str:
        return str(self.inner)

    def _reseed(self, *key: int) -> None:
        state = np.random.SeedSequence([self.seed, *key]).generate_state(2)
        for i, owner in enumerate((self.inner, getattr(self.inner, "_random_sampler", None))):
            rng = getattr(owner, "_rng", None)
            if rng is not None:  # optuna's LazyRandomState (shared with NSGA-II's child generation)
                rng.rng.seed(int(state[i]))

    def infer_relative_search_space(self, study, trial):  # type: ignore[no-untyped-def]
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):  # type: ignore[no-untyped-def]
        parents = getattr(self.inner, "get_parent_population", None)  # GA samplers (Optuna >= 4.2)
        if parents is not None and search_space:
            # A GA sampler's first trial of a generation selects the parents (drawing from the random
            # state) and gets them in selection order; later trials read the study's cache of them in
            # trial order. A run killed in that first trial after the cache was stored would redraw it
            # from the cache: another order, another child. So every trial reads the cache, and draws
            # from a state re-seeded after the selection.
            parents(study, self.inner.get_trial_generation(study, trial))
            n = self._n_complete.get(trial._trial_id)  # set by before_trial; counted only if not
            self._reseed(_complete(study) if n is None else n, RELATIVE_KEY)
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):  # type: ignore[no-untyped-def]
        n = self._n_complete.get(trial._trial_id)
        if n is not None:
            self._reseed(n, zlib.crc32(param_name.encode()))
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        n = self._n_complete[trial._trial_id] = _complete(study)
        self._reseed(n)
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:  # type: ignore[no-untyped-def]
        self._n_complete.pop(trial._trial_id, None)
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:  # Optuna calls it in each thread of n_jobs > 1; trials re-seed anyway
        self.inner.reseed_rng()


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """Optuna samplers that handle several objectives, categorical choices and trial constraints,
    wrapped in :class:`ResumableSampler`."""
    return ResumableSampler(_make_inner_sampler(name, seed), seed)


def _make_inner_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=40)
    if name == "nsga3":
        return optuna.samplers.NSGAIIISampler(seed=seed, population_size=40)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=40)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # GPSampler also handles constraints and several objectives, but took > 5 min for 60 trials of a
    # 4-layer problem on 2 shared cores: too slow for hundreds of trials over 22 categorical layers.
    raise ConfigError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}")


def make_storage(settings: SearchSettings, journal_path: Path | None) -> optuna.storages.BaseStorage:
    """The study's storage: an RDB URL (with heartbeats, so a dead worker's trial is failed) or a journal."""
    if settings.storage and "://" in settings.storage:
        return _rdb_storage(settings.storage)
    path = Path(settings.storage) if settings.storage else journal_path
    if path is None:
        raise ConfigError("no study storage: set search.storage to a journal path or an RDB URL")
    from mpsearch.search.journal import journal_storage

    return journal_storage(path)  # absolute path, flock: a killed holder's lock goes with it


def _rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """Open an RDB study storage. Workers that open a fresh database at the same moment race on
    Optuna's schema stamp (one gets a UNIQUE-constraint error on ``alembic_version``); the loser
    finds the schema made and opens it on retry."""
    import sqlalchemy.engine
    import sqlalchemy.exc

    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as e:
            if attempt == 2:
                reason = str(getattr(e, "orig", e)).splitlines()[0]
                shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
                raise ConfigError(f"cannot open the study storage {shown}: {reason}; check search.storage "
                                  "(the database must exist and be reachable)") from e
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def candidate_from_params(params: dict[str, str], problem: SearchProblem) -> Candidate:
    """The candidate of a trial's parameters: one per variable (layer group), given to all its members."""
    labels = {pair_label(p): p for p in problem.pairs}
    bits = {n: labels[params[var]] for var, members in problem.variables for n in members}
    return Candidate({n: bits[n] for n in problem.layers})


def params_of(candidate: Candidate, problem: SearchProblem) -> dict[str, str]:
    """Inverse of :func:`candidate_from_params` (for ``enqueue_trial``); the candidate must respect the groups."""
    problem.check_candidate(candidate)
    return {var: pair_label(candidate[members[0]]) for var, members in problem.variables}


def warm_start_candidates(problem: SearchProblem, n_budgets: int = 8, latency_ms: float | None = None,
                          weight_kib: float | None = None, memory: bool = True,
                          mode: str = "ilp", bops: bool = False) -> list[Candidate]:
    """Uniform baselines, then (``mode="ilp"``) the exact-ILP optimum of the proxy at ``n_budgets``
    latency budgets and, with ``memory``, at ``n_budgets`` weight budgets (with ``bops``, at
    ``n_budgets`` BOPs budgets): sensitivity-guided points spread along the front, all within the
    run's budgets. Every candidate respects the problem's layer groups."""
    if mode not in WARM_STARTS:
        raise ConfigError(f"search.warm_start={mode!r} is unknown; use one of {', '.join(WARM_STARTS)}")
    if mode == "none":
        return []
    out = [Candidate.uniform(problem.layers, *p) for p in problem.pairs]
    if mode == "ilp":
        from mpsearch.search.ilp import ilp_front, sweep_budgets

        lat = sweep_budgets(problem, n_budgets, "latency", latency_ms, weight_kib)
        out += [s.candidate for s in ilp_front(problem, lat, [weight_kib])]
        if memory:
            mem = sweep_budgets(problem, n_budgets, "weight", latency_ms, weight_kib)
            out += [s.candidate for s in ilp_front(problem, [latency_ms], mem)]
        if bops and problem.macs:
            out += _bops_sweep(problem, n_budgets, latency_ms, weight_kib)
    return list(dict.fromkeys(out))


def _bops_sweep(problem: SearchProblem, k: int, latency_ms: float | None, weight_kib: float | None) -> list[Candidate]:
    """ILP optima at ``k`` BOPs budgets from the fewest BOPs to the proxy optimum's (capped by the run's)."""
    from mpsearch.search.ilp import solve_ilp

    best = solve_ilp(problem, latency_ms, weight_kib)
    if best is None:
        return []
    lo, hi = problem.extreme("bops_g"), best.objectives.bops_g
    out = []
    for b in np.linspace(lo, hi, max(k, 1)) if hi > lo else [hi]:
        sol = solve_ilp(replace(problem, bops_budget_g=float(b)), latency_ms, weight_kib)
        if sol is not None:
            out.append(sol.candidate)
    return out


def _objective(problem: SearchProblem, settings: SearchSettings, proxy: Callable[[Candidate], float] | None = None):
    """``proxy``: a joint (whole-candidate) proxy replacing the additive one as the first objective."""
    choices = [pair_label(p) for p in problem.pairs]

    metrics = settings.metric_names()

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        params = {var: trial.suggest_categorical(var, choices) for var, _ in problem.variables}
        cand = candidate_from_params(params, problem)
        obj = problem.evaluate(cand)
        if proxy is not None:
            obj = replace(obj, proxy=float(proxy(cand)))
        # Constraints (feasible when <= 0) are stored with the trial, so samplers and resumed runs see them.
        if settings.latency_ms is not None:
            trial.set_constraint("latency_ms", obj.latency_ms - settings.latency_ms)
        if settings.weight_kib is not None:
            trial.set_constraint("weight_kib", obj.weight_kib - settings.weight_kib)
        if problem.activation_budget_kib is not None:
            trial.set_constraint("activation_kib", obj.activation_kib - problem.activation_budget_kib)
        if problem.bops_budget_g is not None:
            trial.set_constraint("bops_g", obj.bops_g - problem.bops_budget_g)
        trial.set_user_attr("weight_kib", obj.weight_kib)
        return tuple(getattr(obj, m) for m in metrics)

    return objective


def _complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def open_study(problem: SearchProblem, settings: SearchSettings, storage_path: Path | None,
               seed_offset: int = 0, cleanup: bool = True) -> optuna.Study:
    """Create or load the study; on first creation enqueue the warm start.

    ``cleanup`` puts trials a killed run left RUNNING back in the queue (WAITING, keeping their
    number and any parameters already drawn, which Optuna reuses), so the resumed run evaluates them
    where the uninterrupted run would have: no warm-start candidate is lost and trial numbers match.
    Only the process that owns the run (not a joining worker) does it, and not on RDB storage, where
    a live worker elsewhere may be running them (heartbeats fail dead workers' trials there instead, and
    :func:`_fail_trials_without_heartbeat` those of a worker killed before its first heartbeat).
    """
    journal = storage_path if not settings.storage else (None if "://" in settings.storage else settings.storage)
    if cleanup and journal is not None:  # a journal a crash left unreadable is cut back to its readable part
        from mpsearch.search.journal import journal_lock, remove_stale_symlink_lock
        from mpsearch.storage import repair_journal

        remove_stale_symlink_lock(journal)
        lock = journal_lock(journal)
        lock.acquire()  # a live worker may still append: repair between its writes, never during one
        try:
            repair_journal(journal)
        finally:
            lock.release()
    storage = make_storage(settings, storage_path)
    study = optuna.create_study(
        study_name=settings.study_name, storage=storage, load_if_exists=True,
        directions=["minimize"] * len(settings.metric_names()),
        sampler=make_sampler(settings.sampler, settings.seed + 1000 * seed_offset),
    )
    names = settings.metric_names()
    if study.metric_names != names:
        study.set_metric_names(names)
    if cleanup and not isinstance(storage, optuna.storages.RDBStorage):
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.WAITING)
    elif cleanup:
        _fail_trials_without_heartbeat(storage, study)
    if cleanup and not study.trials:
        for cand in warm_start_candidates(problem, settings.warm_budgets, settings.latency_ms,
                                          settings.weight_kib, "memory" in settings.objective_names(),
                                          settings.warm_start, bops="bops" in settings.objective_names()):
            study.enqueue_trial(params_of(cand, problem), skip_if_exists=True)
    return study


def _fail_trials_without_heartbeat(storage: optuna.storages.RDBStorage, study: optuna.Study) -> None:
    """Fail RUNNING trials that never sent a heartbeat and started over ``GRACE_S`` ago.

    A worker killed between creating a trial and its first heartbeat leaves the trial RUNNING with no
    heartbeat row, and Optuna's stale-trial check only looks at trials that have one: without this the
    trial stays RUNNING forever. A live worker beats within ``HEARTBEAT_S`` (< ``GRACE_S``) of starting a
    trial, so such a trial is a dead worker's. (Optuna has no public reader of heartbeats.)
    """
    from optuna.storages._rdb import models

    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=GRACE_S)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.datetime_start is None or t.datetime_start > cutoff:
            continue
        session = storage.scoped_session()
        try:
            beats = models.TrialHeartbeatModel.where_trial_id(t._trial_id, session)
        finally:
            session.close()
        if beats is None:
            log.warning("trial %d was left RUNNING by a worker that never reported; marking it FAIL", t.number)
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)


def work(study: optuna.Study, problem: SearchProblem, settings: SearchSettings, progress: bool = False,
         worker_id: int = 0, proxy: Callable[[Candidate], float] | None = None) -> list[int]:
    """Run trials until the study holds ``settings.n_trials`` finished ones (counting every worker's).

    Returns the numbers of the trials this call finished.
    """
    remaining = settings.n_trials - _complete(study)
    if remaining <= 0:
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    finished: list[int] = []

    def record(_: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            finished.append(trial.number)

    stop = optuna.study.MaxTrialsCallback(settings.n_trials, states=(optuna.trial.TrialState.COMPLETE,))
    objective = _objective(problem, settings, proxy)

    def tagged(trial: optuna.Trial) -> tuple[float, ...]:
        trial.set_user_attr("worker", worker_id)
        return objective(trial)

    with _stop_between_trials_on_sigint(study):
        study.optimize(tagged, n_trials=remaining, callbacks=[record, stop], show_progress_bar=progress)
    return finished


@contextlib.contextmanager
def _stop_between_trials_on_sigint(study: optuna.Study) -> Iterator[None]:
    """Ctrl-C stops the search after the running trial (milliseconds), then raises KeyboardInterrupt.

    A KeyboardInterrupt raised at an arbitrary point inside Optuna's trial bookkeeping can leave the
    trial RUNNING and turn into another error (Optuna 5.1's ``_run_trial`` then fails with an
    UnboundLocalError); between trials nothing is half-done. A second Ctrl-C interrupts at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        hits.append(signum)
        if len(hits) > 1:
            raise KeyboardInterrupt
        try:
            study.stop()
        except RuntimeError:  # not inside optimize (before or after it): nothing half-done, stop now
            raise KeyboardInterrupt from None

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if hits:
        raise KeyboardInterrupt


def write_spec(path: Path, problem: SearchProblem, settings: SearchSettings, journal_path: Path | None) -> Path:
    """The file a worker needs: the problem tables and the settings (storage resolved to a URL or path)."""
    from mpsearch.storage import atomic_write_text

    storage = settings.storage or (str(journal_path.resolve()) if journal_path else None)
    spec = {"problem": json.loads(problem.to_json()), "settings": {**asdict(replace(settings, storage=storage))}}
    atomic_write_text(path, json.dumps(spec) + "\n")
    return path


def read_spec(path: Path) -> tuple[SearchProblem, SearchSettings]:
    try:
        spec = json.loads(Path(path).read_text())
        return SearchProblem.from_json(json.dumps(spec["problem"])), SearchSettings(**spec["settings"])
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"search spec {str(path)!r} is unreadable ({e}); give the search_spec.json a run wrote")


def run_search(problem: SearchProblem, settings: SearchSettings, storage_path: Path,
               progress: bool = True, proxy: Callable[[Candidate], float] | None = None) -> optuna.Study:
    """Run (or resume) the study until it holds ``n_trials`` finished trials.

    ``storage_path`` is the journal file used when ``settings.storage`` is None; with ``workers > 1``
    the extra processes read ``search_spec.json`` written beside it.
    """
    problem.check_budgets(settings.latency_ms, settings.weight_kib)
    study = open_study(problem, settings, storage_path)
    done = _complete(study)
    if done:
        log.info("resuming study %s: %d finished trial(s) kept", settings.storage or storage_path, done)
    procs: list[subprocess.Popen] = []
    if (settings.workers > 1 or settings.storage) and done < settings.n_trials:
        # What any worker needs, here or on another machine: ``mpsearch-worker search_spec.json --worker-id K``.
        spec = write_spec(Path(storage_path).with_name("search_spec.json"), problem, settings, storage_path)
        for i in range(1, settings.workers):
            # Their own session: a terminal's Ctrl-C reaches only this process, which stops them with
            # exactly one SIGINT each (a second one would interrupt a worker inside Optuna's bookkeeping).
            procs.append(subprocess.Popen([sys.executable, "-m", "mpsearch.search.worker", str(spec),
                                           "--worker-id", str(i), "--parent-pid", str(os.getpid())],
                                          start_new_session=True))
        log.info("started %d worker process(es) on the study", len(procs))
    try:
        work(study, problem, settings, progress, proxy=proxy)
    except BaseException:  # Ctrl-C or an error here: stop the workers too (a re-run resumes with them)
        _stop(procs)
        raise
    failed = [p.args for p in procs if p.wait() != 0]
    if failed:
        raise MPSearchError(f"{len(failed)} search worker(s) failed; see their log above, then re-run to resume")
    return study


def _stop(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """SIGINT each worker (each fails its running trial and exits), then SIGKILL any still running."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def feasible_front(study: optuna.Study, problem: SearchProblem) -> list[tuple[optuna.trial.FrozenTrial, Candidate]]:
    """Feasible, non-dominated trials (Optuna's own Pareto computation), unique candidates, by latency."""
    seen: set[Candidate] = set()
    front = []
    for t in study.best_trials:
        if any(c > 0 for c in _constraints(t)):
            continue
        cand = candidate_from_params(t.params, problem)
        if cand not in seen:
            seen.add(cand)
            front.append((t, cand))
    # Predicted latency, whether or not it is an objective of the study.
    return sorted(front, key=lambda tc: (problem.evaluate(tc[1]).latency_ms, tc[0].number))


def feasible_candidates(study: optuna.Study, problem: SearchProblem) -> list[Candidate]:
    """The candidates of every finished, feasible trial."""
    return [candidate_from_params(t.params, problem)
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if not any(c > 0 for c in _constraints(t))]


def feasible_points(study: optuna.Study, n_objectives: int = 2) -> np.ndarray:
    """Objective vectors (first ``n_objectives``, in the study's order) of every finished, feasible trial."""
    pts = [t.values[:n_objectives] for t in study.get_trials(deepcopy=False,
                                                             states=(optuna.trial.TrialState.COMPLETE,))
           if not any(c > 0 for c in _constraints(t))]
    return np.asarray(pts, dtype=float).reshape(-1, n_objectives)


@dataclass(frozen=True)
class HypervolumeComparison:
    """Hypervolumes of two point sets on the same normalised objectives and reference point."""

    hypervolume: float
    reference_hypervolume: float
    ratio: float  # hypervolume / reference_hypervolume
    ideal: tuple[float, ...]
    nadir: tuple[float, ...]
    reference_point: tuple[float, ...]  # in normalised units: (1 + margin, ...)


def compare_fronts(points: np.ndarray, reference_front: np.ndarray, margin: float = 0.1,
                   ideal: np.ndarray | None = None, nadir: np.ndarray | None = None) -> HypervolumeComparison:
    """Hypervolume of ``points`` against that of ``reference_front`` (e.g. the exact-ILP front).

    Both are minimised objective vectors. Each objective is scaled to [0, 1] between ``ideal`` and
    ``nadir`` (default: the reference front's extremes, which for the exact front are properties of
    the problem, not of either search) and the reference point is ``1 + margin`` on every axis; points
    beyond it count for nothing. Dominated points are allowed.
    """
    # Optuna 5 has no public hypervolume function (only plot_hypervolume_history, which draws); this is
    # the WFG implementation its samplers and that plot use.
    from optuna._hypervolume import compute_hypervolume

    ref = np.asarray(reference_front, dtype=float)
    pts = np.asarray(points, dtype=float).reshape(-1, ref.shape[1])
    lo = ref.min(axis=0) if ideal is None else np.asarray(ideal, dtype=float)
    hi = ref.max(axis=0) if nadir is None else np.asarray(nadir, dtype=float)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    rp = np.full(ref.shape[1], 1.0 + margin)

    def hv(x: np.ndarray) -> float:
        z = (x - lo) / span
        z = z[np.all(z <= rp, axis=1)]
        return float(compute_hypervolume(z, rp)) if len(z) else 0.0

    h, h_ref = hv(pts), hv(ref)
    return HypervolumeComparison(h, h_ref, h / h_ref if h_ref > 0 else float("nan"), tuple(lo.tolist()),
                                 tuple(hi.tolist()), tuple(rp.tolist()))


@dataclass
class FrontComparison:
    """The search's feasible front beside the exact-ILP front, for the report.

    ``fronts``: ``{"optuna": [...], "ilp": [...]}``, points ``{"proxy", "latency_ms", "weight_kib"}``;
    ``hypervolume``: on (proxy, latency), both under the run's budgets, normalised by the ILP front's
    extremes; ``ilp_seconds``: wall time of the ILP sweep.
    """

    fronts: dict[str, list[dict[str, float]]]
    hypervolume: HypervolumeComparison | None
    ilp_seconds: float
    ilp_budgets: list[float]

    def note(self) -> str:
        if self.hypervolume is None:
            return "Exact-ILP front: no candidate meets the budgets."
        h = self.hypervolume
        return (f"Exact ILP (scipy HiGHS) on the same proxy and budgets at {len(self.ilp_budgets)} latency budgets: "
                f"{len(self.fronts['ilp'])} distinct optima in {self.ilp_seconds:.2f} s. Hypervolume of the search's "
                f"feasible (proxy, latency) points / the ILP front's = {h.ratio:.4f} (objectives scaled to the ILP "
                f"front's range, reference point {h.reference_point[0]:g} on each axis).")


def _point(obj: Objectives) -> dict[str, float]:
    return {"proxy": float(obj.proxy), "latency_ms": float(obj.latency_ms), "weight_kib": float(obj.weight_kib)}


def front_comparison(study: optuna.Study, problem: SearchProblem, settings: SearchSettings,
                     n_budgets: int = 8) -> FrontComparison:
    """Solve the exact ILP at ``n_budgets`` latency budgets (within the run's) and compare fronts."""
    import time

    from mpsearch.search.ilp import ilp_front, sweep_budgets

    start = time.perf_counter()
    budgets = sweep_budgets(problem, n_budgets, "latency", settings.latency_ms, settings.weight_kib)
    ilp = ilp_front(problem, budgets, [settings.weight_kib])
    seconds = time.perf_counter() - start
    fronts = {"optuna": [_point(problem.evaluate(c)) for _, c in feasible_front(study, problem)],
              "ilp": [_point(s.objectives) for s in ilp]}
    hv = None
    if ilp:
        ref = np.array([[s.objectives.proxy, s.objectives.latency_ms] for s in ilp])
        # (proxy, latency) of every feasible trial, computed here: latency need not be a study objective.
        pts = [(o.proxy, o.latency_ms) for o in map(problem.evaluate, feasible_candidates(study, problem))]
        hv = compare_fronts(np.asarray(pts, dtype=float).reshape(-1, 2), ref)
    return FrontComparison(fronts, hv, seconds, budgets)


def spread(items: list, k: int) -> list:
    """``k`` items evenly spaced along a sorted list, ends included."""
    if len(items) <= k:
        return list(items)
    idx = sorted({int(round(i)) for i in np.linspace(0, len(items) - 1, k)})
    return [items[i] for i in idx]
