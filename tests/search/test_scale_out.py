"""Several worker processes on one study: PostgreSQL (RDB storage) and the embedded journal file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from mpsearch.search import SearchProblem, SearchSettings, run_search
from mpsearch.search.optuna_search import make_storage, open_study, write_spec
from mpsearch.search.worker import main as worker_main

sys.path.insert(0, str(Path(__file__).parent))
from test_search import make_problem  # noqa: E402

COMPLETE = optuna.trial.TrialState.COMPLETE


def _finished_by_worker(stderr: str) -> list[int]:
    line = re.search(r"worker done: (\{.*\})", stderr)
    assert line, f"worker printed no summary; its output ends: {stderr[-800:]}"
    return json.loads(line.group(1))["finished"]


def _check_none_lost(study: optuna.Study, per_worker: dict[int, list[int]], n_trials: int) -> None:
    complete = {t.number: t for t in study.get_trials(states=(COMPLETE,))}
    assert n_trials <= len(complete) <= n_trials + len(per_worker)  # MaxTrialsCallback may overshoot by one each
    claimed = [n for nums in per_worker.values() for n in nums]
    assert len(claimed) == len(set(claimed)), "two workers claim the same trial"
    assert set(claimed) == set(complete), "a finished trial is missing from the study, or one nobody ran"
    for wid, nums in per_worker.items():
        assert nums, f"worker {wid} ran no trial"
        assert all(complete[n].user_attrs["worker"] == wid for n in nums)
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


@pytest.mark.slow  # starts a PostgreSQL server and two worker processes (~20 s on 2 cores)
def test_two_workers_share_a_postgresql_study(postgres_url: str, tmp_path: Path) -> None:
    problem = make_problem()
    settings = SearchSettings("nsga2", 30, 0, latency_ms=10.0, storage=postgres_url, study_name="pg-two-workers")
    owner = open_study(problem, settings, None)  # creates the study and enqueues the warm start
    spec = write_spec(tmp_path / "search_spec.json", problem, settings, None)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = {wid: subprocess.Popen([sys.executable, "-m", "mpsearch.search.worker", str(spec), "--worker-id", str(wid)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for wid in (1, 2)}
    outputs = {wid: p.communicate(timeout=300) for wid, p in procs.items()}
    for wid, p in procs.items():
        assert p.returncode == 0, outputs[wid][1][-1500:]
    per_worker = {wid: _finished_by_worker(err) for wid, (_, err) in outputs.items()}
    study = optuna.load_study(study_name="pg-two-workers", storage=make_storage(settings, None))
    _check_none_lost(study, per_worker, 30)
    assert owner.trials[0].params == study.trials[0].params  # the warm start ran first
    for t in study.get_trials(states=(COMPLETE,)):  # values are the problem's, constraints stored
        assert t.values[1] == pytest.approx(problem.evaluate(
            {n: tuple(int(b) for b in re.findall(r"\d+", v)) for n, v in t.params.items()}).latency_ms)
        assert "latency_ms" in t.constraints


def test_workers_option_on_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    problem = make_problem()
    path = tmp_path / "study.journal"
    fast = problem.evaluate
    joined: list[bool] = []

    def wait_for_the_worker(cand):  # only this process waits: the spawned worker loads the plain problem
        deadline = time.time() + 120
        # The warm start evaluates candidates before the worker is spawned (after the spec is written).
        while not joined and (tmp_path / "search_spec.json").exists() and time.time() < deadline:
            storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
            trials = optuna.load_study(study_name="mpsearch", storage=storage).get_trials(states=(COMPLETE,))
            joined.extend([True] if any(t.user_attrs.get("worker") == 1 for t in trials) else [])
            time.sleep(0.2)
        return fast(cand)

    monkeypatch.setattr(problem, "evaluate", wait_for_the_worker)
    study = run_search(problem, SearchSettings("random", 40, 0, workers=2), path, progress=False)
    workers = {t.user_attrs["worker"] for t in study.get_trials(states=(COMPLETE,))}
    assert workers == {0, 1}
    assert 40 <= len(study.get_trials(states=(COMPLETE,))) <= 41
    assert (tmp_path / "search_spec.json").exists()


def test_worker_bad_spec_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "spec.json"
    bad.write_text("{}")
    assert worker_main([str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "search spec" in err[0]


def test_problem_round_trips_through_json() -> None:
    p = make_problem()
    q = SearchProblem.from_json(p.to_json())
    assert q == p
