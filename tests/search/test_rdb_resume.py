"""kill -9 of a search on Optuna RDB storage (an SQLite file; PostgreSQL is covered by test_scale_out),
then resume: every finished trial is kept, and the trial the dead process held is failed by the
heartbeat, not left RUNNING."""

from __future__ import annotations

import datetime
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from mpsearch.errors import ConfigError
from mpsearch.search import SearchSettings, optuna_search, run_search
from tests.search.test_search import make_problem

COMPLETE, RUNNING = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING


def _completed(db: Path) -> int:
    """Finished trials, read without opening an Optuna storage: that would race the search process
    on creating the schema."""
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)
    try:
        return con.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    finally:
        con.close()


def _trials(url: str, states: tuple) -> dict[int, list[float]]:
    storage = optuna.storages.RDBStorage(url)
    try:
        study = optuna.load_study(study_name="mpsearch", storage=storage)
        return {t.number: t.values for t in study.get_trials(deepcopy=False, states=states)}
    finally:
        storage.remove_session()
        storage.engine.dispose()


@pytest.mark.slow  # ~15 s quiet (SQLite commits per trial, a subprocess, the heartbeat grace period)
def test_sigkill_on_rdb_storage_then_resume_keeps_every_finished_trial(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_search import make_problem
        from mpsearch.search import SearchSettings, run_search, optuna_search
        optuna_search.HEARTBEAT_S, optuna_search.GRACE_S = 1, 2  # a dead worker's trial fails after 2 s
        p = make_problem()
        orig = p.evaluate
        def slow(c):
            time.sleep(0.1)
            return orig(c)
        p.evaluate = slow
        run_search(p, SearchSettings("nsga2", 100000, 0, storage={url!r}), {str(tmp_path / 'unused.journal')!r},
                   progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            time.sleep(1.0)
            try:
                if _completed(tmp_path / "study.db") >= 8:
                    break
            except sqlite3.Error:  # the tables do not exist yet, or the file is locked by a write
                continue
        assert proc.poll() is None, "the search process ended before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = _trials(url, (COMPLETE,))
    held = set(_trials(url, (RUNNING,)))  # the trial the killed process was running, if any
    assert len(before) >= 8
    # Past the 2 s grace period: SQLite keeps heartbeats and its clock to the whole second and Optuna's check
    # is strict (now - beat > 2 s), so a beat 0.1 s after a second boundary is stale only 3 s of real time
    # later; 2.5 s failed it once in CI.
    time.sleep(4.0)

    monkeypatch.setattr(optuna_search, "HEARTBEAT_S", 1)
    monkeypatch.setattr(optuna_search, "GRACE_S", 2)
    resumed = run_search(make_problem(), SearchSettings("nsga2", len(before) + 5, 0, storage=url),
                         tmp_path / "unused.journal", progress=False)
    after = {t.number: t.values for t in resumed.get_trials(states=(COMPLETE,))}
    assert all(after[n] == v for n, v in before.items()), "a finished trial changed or was lost"
    assert len(after) == len(before) + 5
    assert not resumed.get_trials(states=(RUNNING,)), "the killed process's trial is still RUNNING"
    # Only the trial the killed process was running is lost, marked FAIL by the heartbeat check.
    failed = {t.number for t in resumed.get_trials(states=(optuna.trial.TrialState.FAIL,))}
    assert failed == held


def test_workers_racing_on_a_fresh_database_open_it_on_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlalchemy.exc

    real, calls = optuna.storages.RDBStorage, []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # another worker stamped the schema first
            raise sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE"))
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(optuna_search.time, "sleep", lambda s: None)
    storage = optuna_search.make_storage(SearchSettings("nsga2", 1, 0, storage="sqlite:///:memory:"), None)
    assert len(calls) == 2 and isinstance(storage, real)


def test_unreachable_study_database_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optuna_search.time, "sleep", lambda s: None)
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'study.db'}"
    with pytest.raises(ConfigError, match=r"cannot open the study storage .*check search.storage") as e:
        optuna_search.make_storage(SearchSettings("nsga2", 1, 0, storage=url), None)
    assert "\n" not in str(e.value)


def test_a_trial_killed_before_its_first_heartbeat_is_failed_on_resume(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed between creating a trial and its first heartbeat leaves no heartbeat row, which
    Optuna's own stale check ignores: the resuming process fails it once it is older than the grace
    period, and leaves a younger one (a live worker's, about to beat) alone."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    settings = SearchSettings("nsga2", 4, 0, storage=url)
    study = optuna_search.open_study(make_problem(), settings, None)
    dead = study.ask()  # RUNNING, never a heartbeat: what a kill right after create_new_trial leaves
    # Age `dead` past the grace period in the database rather than by sleeping: a sleep just over the
    # period also ages `young` past it whenever the machine is slow between the two opens.
    monkeypatch.setattr(optuna_search, "GRACE_S", 30)
    started = datetime.datetime.now() - datetime.timedelta(seconds=31)
    con = sqlite3.connect(tmp_path / "study.db")
    with con:
        con.execute("UPDATE trials SET datetime_start = ? WHERE number = ?", (str(started), dead.number))
    con.close()
    young = optuna_search.open_study(make_problem(), settings, None).ask()  # fails `dead`, older than 30 s
    optuna_search.open_study(make_problem(), settings, None)  # a live worker's fresh trial stays RUNNING
    assert _trials(url, (RUNNING,)).keys() == {young.number}
    assert _trials(url, (optuna.trial.TrialState.FAIL,)).keys() == {dead.number}
