"""Injected hardware faults (TableBackend): a failed build or measurement is a value recorded in the
report, the run goes on; past ``search.max_failure_rate`` it stops with one clear error, keeping the
study and caches so that a re-run resumes with no trial lost. A SIGKILLed run resumes likewise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from mpsearch.candidate import Candidate
from mpsearch.errors import HardwareError
from mpsearch.hardware.base import Measurement
from mpsearch.pipeline import run
from mpsearch.testing import TableBackend
from tests.reliability.conftest import REPO, leftovers, snapshot, table_factory, tiny_config


def _trials(journal: Path) -> dict[int, list[float]]:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="mpsearch", storage=storage)
    return {t.number: t.values for t in study.get_trials(states=[optuna.trial.TrialState.COMPLETE])}


def test_a_failed_build_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    int8 = Candidate.uniform(["stem", "conv1", "conv2", "down", "fc"], 8, 8)  # TinyResNet's layers
    error = "build failed: TVMError: injected build failure"
    out = run(cfg, table_factory(fail=[int8.key()], fail_error=error))  # 1 failure of 5: below the rate
    rows = {c.label: c for c in out.summary.candidates}
    assert rows["int8"].measured_latency_ms is None and rows["int8"].accuracy is not None
    assert all(c.measured_latency_ms for label, c in rows.items() if label != "int8")
    assert f"int8: not measured ({error})" in out.summary.notes
    assert f"not measured ({error})" in (out.run_dir / "report.md").read_text()
    df = pd.read_csv(out.run_dir / "pareto.csv").set_index("label")
    assert pd.isna(df.loc["int8", "measured_latency_ms"]) and df["measured_latency_ms"].notna().sum() == len(df) - 1


def test_a_measurement_that_raises_is_a_value_too(tmp_path: Path, tiny_prepared, tiny_ranges) -> None:
    class Raising(TableBackend):
        def measure(self, prepared, candidate, ranges):
            if candidate["fc"] == (8, 8):
                raise TimeoutError("no answer from the board within 30 s")
            return super().measure(prepared, candidate, ranges)

    names = tiny_prepared.layer_names
    out = Raising().measure_many(tiny_prepared, [Candidate.uniform(names, 8, 8), Candidate.uniform(names, 32, 32)],
                                 tiny_ranges)
    assert out[0] == Measurement(error="TimeoutError: no answer from the board within 30 s")
    assert out[1].ok


def test_past_the_failure_rate_the_run_stops_then_resumes_with_no_trial_lost(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, max_failure_rate=0.2)
    journal = Path(cfg.results_dir) / cfg.default_run_name() / "study.journal"
    with pytest.raises(HardwareError) as info:
        run(cfg, table_factory(fail=["*"], fail_error="run failed: timed out after 30 s"))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("5 of 5 end-to-end measurements failed (e.g. pareto-0: run failed: "
                                              "timed out after 30 s), more than search.max_failure_rate=0.2")
    trials = _trials(journal)
    assert len(trials) == 30 and not (journal.parent / "report.md").exists() and not leftovers(tmp_path)
    caches = {k: v for k, v in snapshot(tmp_path / "cache").items()}
    assert "accuracy.jsonl" in caches and any(k.startswith("sensitivity/") for k in caches)

    backends = table_factory()
    out = run(cfg, backends)  # the device works again: the same command resumes
    assert _trials(journal) == trials  # no trial lost, none re-run
    assert (out.run_dir / "report.md").is_file()
    assert {k: v for k, v in snapshot(tmp_path / "cache").items() if k in caches} == caches  # caches reused


@pytest.mark.slow
def test_sigkill_mid_search_then_rerun_keeps_every_finished_trial(tmp_path: Path) -> None:
    """(tests/search/test_search.py kills a bare search; this kills the whole run.)
    The whole pipeline killed with SIGKILL while its search writes the journal; the same command resumes."""
    cfg = tiny_config(tmp_path, n_trials=100000)
    cfg.run_name = "killed"
    journal = Path(cfg.results_dir) / "killed" / "study.journal"
    script = textwrap.dedent(f"""
        import json
        from mpsearch.config import RunConfig
        from mpsearch.pipeline import run
        from mpsearch.testing import table_backend_factory
        run(RunConfig.from_dict(json.loads({json.dumps(json.dumps(cfg.to_dict()))})), table_backend_factory)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stderr=subprocess.PIPE)
    deadline = time.time() + 240
    n = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        if journal.exists():
            try:
                n = len(_trials(journal))
            except Exception:  # noqa: BLE001 - the writer may be mid-line; read again
                continue
            if n >= 60:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert n >= 60, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    before = _trials(journal)
    config_json = (journal.parent / "config.json").read_bytes()
    cfg.search.n_trials = len(before) + 5
    out = run(cfg, table_factory())
    after = _trials(journal)
    assert all(after[k] == v for k, v in before.items())  # 0 finished trials lost
    assert len(after) == len(before) + 5
    assert (out.run_dir / "report.md").is_file() and not leftovers(tmp_path)
    assert json.loads(config_json)["search"]["n_trials"] == 100000  # the killed run's own record is intact
