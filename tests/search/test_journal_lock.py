"""The study journal survives a kill at any moment: its lock goes with a dead holder, a live one is
waited for, and a resumed search reaches the same study as an uninterrupted one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest

from mpsearch.search import SearchSettings, run_search
from mpsearch.search.journal import FlockJournalLock, journal_storage
from tests.search.test_search import make_problem

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX only")

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _holder(path: Path, hold_s: float) -> subprocess.Popen:
    """A process that takes the journal lock, says so on stdout, holds it ``hold_s`` s, then exits."""
    script = textwrap.dedent(f"""
        import sys, time
        from mpsearch.search.journal import FlockJournalLock
        lock = FlockJournalLock({str(path)!r})
        lock.acquire()
        print("locked", flush=True)
        time.sleep({hold_s})
        lock.release()
        print("released", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _acquire_within(lock: FlockJournalLock, timeout: float) -> float | None:
    """Seconds ``lock.acquire()`` took in a thread, or None if it had not returned after ``timeout``."""
    took: list[float] = []

    def go() -> None:
        start = time.monotonic()
        lock.acquire()
        took.append(time.monotonic() - start)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(timeout)
    return took[0] if took else None


def test_a_lock_left_by_a_killed_process_is_released(tmp_path: Path) -> None:
    path = tmp_path / "study.journal"
    proc = _holder(path, 600)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock = FlockJournalLock(path)
    took = _acquire_within(lock, 10)
    assert took is not None and took < 2, "the dead holder's lock was not released"
    lock.release()
    assert sorted(os.listdir(tmp_path)) == ["study.journal"]  # nothing left beside the journal


def test_a_lock_held_by_a_live_process_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "study.journal"
    proc = _holder(path, 1.5)
    lock = FlockJournalLock(path)
    took = _acquire_within(lock, 30)
    assert proc.stdout is not None
    released = proc.stdout.readline().strip()
    proc.wait()
    assert took is not None and took > 0.5, "the lock was taken while a live process held it"
    assert released == "released"
    lock.release()


def test_the_lock_follows_the_journal_when_it_is_replaced(tmp_path: Path) -> None:
    """repair_journal replaces the file: a lock taken on the old file must not count for the new one."""
    path = tmp_path / "study.journal"
    path.write_text("")
    a, b = FlockJournalLock(path), FlockJournalLock(path)
    a.acquire()
    tmp = tmp_path / "new"
    tmp.write_text("")
    os.replace(tmp, path)
    assert _acquire_within(b, 5) is not None  # the new file is free
    a.release()
    b.release()


def test_a_stale_relative_symlink_lock_of_an_earlier_version_does_not_hang_the_resume(tmp_path: Path,
                                                                                         monkeypatch) -> None:
    """The issue's hang: Optuna's symlink lock to a relative path, left by a killed run."""
    monkeypatch.chdir(tmp_path)
    run_dir = Path("results") / "run"
    run_dir.mkdir(parents=True)
    journal = run_dir / "study.journal"
    run_search(make_problem(), SearchSettings("nsga2", 10, 0), journal, progress=False)
    os.symlink(str(journal), str(journal) + ".lock")  # what Optuna 5.1's lock made, relative
    done: list[optuna.Study] = []
    t = threading.Thread(target=lambda: done.append(
        run_search(make_problem(), SearchSettings("nsga2", 20, 0), journal, progress=False)), daemon=True)
    t.start()
    t.join(60)
    assert done, "the resumed search hung on the stale lock"
    assert len(done[0].get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 20
    assert not os.path.lexists(str(journal) + ".lock")


def _complete(path: Path) -> list[tuple[int, dict, list[float]]]:
    study = optuna.load_study(study_name="mpsearch", storage=journal_storage(path))
    return [(t.number, t.params, t.values) for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]


@pytest.mark.parametrize("seed", [0, 1])
def test_a_search_killed_at_a_random_moment_resumes_to_the_same_study(tmp_path: Path, seed: int) -> None:
    """kill -9 at a seeded moment (warm start or NSGA-II generations), re-run: every finished trial is
    kept and the study ends exactly as an uninterrupted run's (same numbers, parameters, values)."""
    n = 90
    run_search(make_problem(), SearchSettings("nsga2", n, 3), tmp_path / "ref.journal", progress=False)
    reference = _complete(tmp_path / "ref.journal")
    assert len(reference) == n
    kill_after = random.Random(seed).randint(3, n - 10)
    path = tmp_path / "s.journal"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(HERE)!r})
        from test_search import make_problem
        from mpsearch.search import SearchSettings, run_search
        p = make_problem()
        orig = p.evaluate
        def slow(c):
            time.sleep(0.01)
            return orig(c)
        p.evaluate = slow
        run_search(p, SearchSettings("nsga2", {n}, 3), {str(path)!r}, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline, seen = time.time() + 120, 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
        if path.exists():
            seen = path.read_bytes().count(b'"state":1')  # COMPLETE operations so far (TrialState.COMPLETE == 1)
            if seen >= kill_after:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert seen >= kill_after and proc.returncode == -signal.SIGKILL
    before = _complete(path)
    assert 0 < len(before) < n
    run_search(make_problem(), SearchSettings("nsga2", n, 3), path, progress=False)
    after = _complete(path)
    assert set(map(repr, before)) <= set(map(repr, after))  # no finished trial lost
    assert after == reference
