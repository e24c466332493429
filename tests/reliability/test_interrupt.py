"""Ctrl-C (SIGINT to the run's process group, as a terminal sends it) stops a run within seconds with one
line saying where it stopped and that a re-run resumes, exit status 130; nothing finished is lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from tests.reliability.conftest import REPO, TINY

DRIVER = Path(__file__).with_name("chaos_driver.py")
#: Seconds from SIGINT to exit allowed on a loaded 2-core machine ("within seconds").
PROMPT_S = 10


def drive(tmp_path: Path, argv: list[str], runs: list[dict[str, Any]], backend: dict | None = None,
          timeout: int = 600) -> dict[str, Any]:
    """Run ``runs`` of ``mpsearch argv`` through chaos_driver.py; returns its results."""
    plan, out = tmp_path / "plan.json", tmp_path / "driver-results.json"
    plan.write_text(json.dumps({"argv": argv, "backend": backend, "runs": runs, "timeout_s": timeout - 30}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, str(DRIVER), str(plan), str(out)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def assert_interrupted(run: dict[str, Any], stage: str) -> None:
    assert run["signalled_in"] == stage, run["stages"]
    assert run["rc"] == 130, run["stderr"][-3000:]
    assert run["exit_after_signal_s"] < PROMPT_S, run["exit_after_signal_s"]
    lines = [ln for ln in run["stderr"].splitlines() if ln.startswith("mpsearch: interrupted")]
    assert lines == [f"mpsearch: interrupted during the {stage} stage; finished work (study trials, tuned kernels, "
                     "timings, caches) is kept: re-run the same command to resume"], run["stderr"][-3000:]
    assert "Traceback" not in run["stderr"] + run["stdout"], run["stderr"][-3000:]


def _trials(journal: Path) -> dict[str, list[optuna.trial.FrozenTrial]]:
    from mpsearch.search.journal import journal_storage

    study = optuna.load_study(study_name="mpsearch", storage=journal_storage(journal))
    out: dict[str, list] = {}
    for t in study.trials:
        out.setdefault(t.state.name, []).append(t)
    return out


def test_ctrl_c_during_the_search_and_the_sensitivity_stops_at_once_and_resumes(tmp_path: Path) -> None:
    argv = [a for a in TINY if not a.startswith("search.n_trials")] + ["search.n_trials=100000", "run_name=ctrl-c"]
    for d in "abc":
        (tmp_path / d).mkdir()
    res = drive(tmp_path, argv, [
        {"cwd": str(tmp_path / "a"), "stage": "search", "signal": "INT", "delay_s": 2.0},
        # 16,384 samples: a sensitivity stage of seconds, not the 0.1 s of 16 on a fast machine
        {"cwd": str(tmp_path / "b"), "stage": "sensitivity", "signal": "INT", "delay_s": 0.3,
         "extra_argv": ["data.calib_samples=16384", "search.sensitivity_samples=16384"]},
        # two search worker processes beside the run: stopped with it (their output is the run's stderr)
        {"cwd": str(tmp_path / "c"), "stage": "search", "signal": "INT", "delay_s": 15.0,
         "extra_argv": ["search.workers=2"]},
    ], backend={})
    search, sensitivity, workers = res["runs"]
    assert_interrupted(search, "search")
    assert_interrupted(sensitivity, "sensitivity")
    assert_interrupted(workers, "search")
    shared = tmp_path / "c" / "results" / "ctrl-c" / "study.journal"
    size = shared.stat().st_size
    time.sleep(2)
    assert shared.stat().st_size == size, "a search worker outlived the interrupted run"
    assert "RUNNING" not in _trials(shared) and {1} <= {t.user_attrs.get("worker") for t in _trials(shared)["COMPLETE"]}
    journal = tmp_path / "a" / "results" / "ctrl-c" / "study.journal"
    trials = _trials(journal)
    assert len(trials["COMPLETE"]) > 0 and "RUNNING" not in trials  # stopped between trials
    assert not (tmp_path / "b" / "results" / "ctrl-c").exists()  # stopped before the run folder was made

    # Re-run into the same folder: every finished trial kept, none re-run (a budget of 10 more trials).
    before = {t.number: t.values for t in trials["COMPLETE"]}
    more = [a for a in argv if not a.startswith("search.n_trials")] + [f"search.n_trials={len(before) + 10}"]
    res = drive(tmp_path, more, [{"cwd": str(tmp_path / "a")}], backend={})
    assert res["runs"][0]["rc"] == 0, res["runs"][0]["stderr"][-3000:]
    after = {t.number: t.values for t in _trials(journal)["COMPLETE"]}
    assert all(after[n] == v for n, v in before.items()) and len(after) == len(before) + 10


@pytest.mark.slow
@pytest.mark.tvm
def test_ctrl_c_during_real_tuning_stops_within_seconds(tmp_path: Path) -> None:
    """MetaSchedule tuning at 1 trial per kernel on the tiny model, interrupted while it tunes."""
    argv = [a for a in TINY if not a.startswith("search.n_trials")] + [
        "search.n_trials=40", "hw_profile.trials_per_task=1", "hw_profile.threads=1"]
    res = drive(tmp_path, argv, [{"cwd": str(tmp_path), "stage": "hardware cost", "signal": "INT",
                                  "delay_s": 8.0}], backend=None)
    assert_interrupted(res["runs"][0], "hardware cost")


@pytest.mark.slow
@pytest.mark.tvm
def test_a_ctrl_c_that_metaschedule_swallowed_ends_tuning_at_the_next_batch(tmp_path: Path, tiny_prepared,
                                                                              tiny_ranges, monkeypatch) -> None:
    """A KeyboardInterrupt raised in a Python callback of the C++ tuning loop can be recorded as a task
    error and the loop goes on; the remembered SIGINT ends every task at the next measure callback."""
    import dataclasses

    from mpsearch import interrupt
    from mpsearch.candidate import Candidate
    from mpsearch.hardware.profile import load_profile
    from mpsearch.hardware.tvm_backend import TVMBackend

    p = load_profile("host_cpu")
    profile = dataclasses.replace(p, tuning=dataclasses.replace(p.tuning, trials_per_task=2, trials_per_iter=1))
    backend = TVMBackend(profile, tmp_path, progress=False)
    monkeypatch.setattr(interrupt, "_requested", type(interrupt._requested)())
    interrupt._requested.set()  # as if SIGINT had arrived and been swallowed
    with pytest.raises(KeyboardInterrupt):
        backend.tune_candidate(tiny_prepared, Candidate.uniform(tiny_prepared.layer_names, 8, 8), tiny_ranges)
    assert backend.stats["tuned_kernels"] == 0
    # Without the stop: 2 trials for each of the candidate's kernels; with it, the batch already in flight.
    records = len(backend.db.get_all_tuning_records())
    assert records <= 2, f"tuning went on after the remembered SIGINT ({records} trials)"


def test_a_sigint_inside_deferred_is_remembered_not_raised_and_check_raises_after() -> None:
    """Around MetaSchedule's tuning (which calls Python from C++) a Ctrl-C must not raise inside those
    calls: it is remembered, the loop stops at its boundary, and check() raises it after; outside
    deferred() it raises at once as before."""
    import signal

    from mpsearch import interrupt

    with interrupt.sigint_requests_stop():
        with interrupt.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs between bytecodes: it would have raised by now
            assert interrupt.requested()
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
    assert not interrupt.requested()
    with pytest.raises(KeyboardInterrupt):
        with interrupt.sigint_requests_stop():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)


@pytest.mark.tvm
def test_the_tuning_strategy_proposes_nothing_once_a_sigint_is_remembered(monkeypatch) -> None:
    from mpsearch import interrupt
    from mpsearch.hardware.strategy import ReplaySpaces

    strategy = ReplaySpaces()
    strategy.left, strategy.traces = 4, [object()]
    monkeypatch.setattr(interrupt, "_requested", type(interrupt._requested)())
    interrupt._requested.set()
    assert strategy.generate_measure_candidates() is None
