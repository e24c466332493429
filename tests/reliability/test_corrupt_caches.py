"""Truncated or corrupted cache files are detected, dropped or cut back, and rebuilt; the run goes on.

(The sensitivity cache: tests/sensitivity/test_sensitivity_cache.py::test_corrupt_file_is_recomputed.
MetaSchedule's database with real tuning records: tests/hardware/test_tvm_backend.py and below.)
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from mpsearch.pipeline import run
from mpsearch.storage import JsonLines, repair_journal
from tests.reliability.conftest import leftovers, table_factory, tiny_config

GOOD = [{"key": f"k{i}", "latency_s": 0.001 * i, "std_s": 0.0, "samples": [0.001 * i]} for i in range(4)]

CORRUPTIONS = {
    "truncated last line": lambda text: text[: len(text) - 17],
    "half line in the middle": lambda text: text.replace(text.splitlines()[1], text.splitlines()[1][:25]),
    "binary garbage": lambda text: text + "\xff\xfe\x00\x9c garbage\n",
    "valid JSON, not a record": lambda text: text + '[1, 2]\n"k9"\n{"no_key": 1}\n{"key": ["list"]}\n',
    "record lacking a field": lambda text: text + '{"key": "k7", "latency_s": 1.0}\n',
    "no final newline": lambda text: text.rstrip("\n"),
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS), ids=list(CORRUPTIONS))
def test_json_lines_store_drops_corrupt_lines_and_keeps_the_rest(tmp_path: Path, corrupt: str) -> None:
    path = tmp_path / "costs.jsonl"
    store = JsonLines(path, required=("latency_s", "std_s", "samples"))
    for rec in GOOD:
        store.put(rec)
    path.write_bytes(CORRUPTIONS[corrupt](path.read_text()).encode("utf-8", "surrogateescape"))
    again = JsonLines(path, required=("latency_s", "std_s", "samples"))
    survivors = {r["key"] for r in GOOD} - ({"k1"} if corrupt == "half line in the middle" else set()) \
        - ({"k3"} if corrupt == "truncated last line" else set())
    assert set(again.records) == survivors and all(again.get(k) == GOOD[int(k[1])] for k in survivors)
    # The file was rewritten clean: every line a complete record, and appending works again.
    again.put({"key": "new", "latency_s": 1.0, "std_s": 0.0, "samples": [1.0]})
    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["key"] for line in lines] == [*sorted(survivors), "new"]
    assert not leftovers(tmp_path)


def test_json_lines_store_keeps_every_record_of_a_key_through_a_repair(tmp_path: Path) -> None:
    """``get`` is a key's latest record, ``history`` all of them in order, also after a reopen that drops
    a corrupt line and rewrites the file."""
    path = tmp_path / "costs.jsonl"
    store = JsonLines(path, required=("latency_s",))
    for i, key in enumerate(["a", "b", "a", "a"]):
        store.put({"key": key, "latency_s": float(i)})
    assert store.get("a")["latency_s"] == 3.0 and [r["latency_s"] for r in store.history("a")] == [0.0, 2.0, 3.0]
    path.write_text(path.read_text() + '{"key": "a", "lat')
    again = JsonLines(path, required=("latency_s",))
    assert [r["latency_s"] for r in again.history("a")] == [0.0, 2.0, 3.0] and again.history("zz") == []
    assert len(path.read_text().splitlines()) == 4


def test_truncated_journal_is_cut_to_its_complete_operations(tmp_path: Path) -> None:
    path = tmp_path / "study.journal"
    path.write_bytes(b'{"op": 1}\n{"op": 2}\n{"op": 3, "half')
    assert repair_journal(path) == 1
    assert path.read_bytes() == b'{"op": 1}\n{"op": 2}\n' and not (tmp_path / "study.journal.corrupt").exists()
    # Corruption in the middle: the operations after it would shift trial ids, so the journal is cut there
    # and the original is kept beside it.
    original = b'{"op": 1}\n{"op": 2, oops\n{"op": 3}\n'
    path.write_bytes(original)
    assert repair_journal(path) == 2
    assert path.read_bytes() == b'{"op": 1}\n' and (tmp_path / "study.journal.corrupt").read_bytes() == original
    assert repair_journal(path) == 0 and repair_journal(tmp_path / "missing.journal") == 0


@pytest.mark.parametrize("damage", ["truncated", "garbage line"])
def test_run_with_damaged_study_journal_and_accuracy_cache_resumes(tmp_path: Path, damage: str) -> None:
    cfg = tiny_config(tmp_path)
    first = run(cfg, table_factory())
    journal, acc = first.run_dir / "study.journal", Path(cfg.cache_dir) / "accuracy.jsonl"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = {t.number: t.values for t in optuna.load_study(study_name="mpsearch", storage=storage).trials}
    data, acc_text = journal.read_bytes(), acc.read_text()
    if damage == "truncated":  # a writer killed mid-line: its last operation is unfinished
        journal.write_bytes(data[:-20])
        acc.write_text(acc_text[:-10])
    else:
        lines = data.splitlines(keepends=True)
        journal.write_bytes(b"".join(lines[:-3]) + b"\x00\xff not json\n" + b"".join(lines[-3:]))
        acc.write_text(acc_text.replace(acc_text.splitlines()[0], "\x00garbage"))
    second = run(cfg, table_factory())
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="mpsearch", storage=storage)
    done = {t.number: t.values for t in study.get_trials(states=[optuna.trial.TrialState.COMPLETE])}
    assert len(done) == cfg.search.n_trials  # the run topped the study up again
    kept = {n: v for n, v in trials.items() if n in done and done[n] == v}
    assert len(kept) >= cfg.search.n_trials - 2  # at most the trial(s) in the damaged operations re-ran
    assert [(c.label, c.accuracy) for c in second.summary.candidates if c.kind == "baseline"] == \
        [(c.label, c.accuracy) for c in first.summary.candidates if c.kind == "baseline"]
    for line in acc.read_text().splitlines():  # the accuracy cache is clean again
        assert "accuracy" in json.loads(line)
    assert (journal.with_name("study.journal.corrupt").exists()) == (damage == "garbage line")
    assert not leftovers(tmp_path)


def test_tuning_database_keeps_workload_ids_consistent(tmp_path: Path) -> None:
    """MetaSchedule's database: a tuning record names its workload by line number, so the workload file
    is cut at its first bad line and records naming a workload that is gone are dropped (re-tuned)."""
    from mpsearch.hardware.tvm_backend import _repair_database  # pure Python: does not import TVM

    wl, tr = tmp_path / "database_workload.json", tmp_path / "database_tuning_record.json"
    wl.write_text('["11", "bW9kMA=="]\n["22", "bW9k\n["33", "bW9kMg=="]\n')
    records = ['[0, [["trace0"], []]]', '[1, [["trace1"], []]]', '[2, [["trace2"], []]]', '[0, "not a trace"]',
               '{"workload": 0}', '[0, [["trace0b"], []]]']
    tr.write_text("\n".join(records) + "\n[0, [[\"tra")
    _repair_database(tmp_path)
    assert wl.read_text() == '["11", "bW9kMA=="]\n'
    assert tr.read_text() == '[0, [["trace0"], []]]\n[0, [["trace0b"], []]]\n'
    before = (wl.read_bytes(), tr.read_bytes())
    _repair_database(tmp_path)  # a clean database is left as it is
    assert (wl.read_bytes(), tr.read_bytes()) == before and not leftovers(tmp_path)


def test_temporary_files_a_killed_writer_left_are_removed_by_the_next_write(tmp_path: Path) -> None:
    import os
    import time

    from mpsearch.storage import STALE_TMP_S, atomic_write_text

    stale, fresh = tmp_path / ".report.md.k1ll3d.tmp", tmp_path / ".report.md.l1v3.tmp"
    other = tmp_path / ".pareto.csv.k1ll3d.tmp"
    for p in (stale, fresh, other):
        p.write_text("half")
    old = time.time() - STALE_TMP_S - 5
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    atomic_write_text(tmp_path / "report.md", "# done\n")
    assert (tmp_path / "report.md").read_text() == "# done\n"
    assert not stale.exists() and fresh.exists()  # a live writer's temporary file is left alone
    assert other.exists()  # another file's: removed when that file is written
