"""Chaos: ``kill -9`` the run at seeded random moments inside each stage, re-run the same command.

One uninterrupted reference run, then, in a fresh folder, the same command killed in one stage after
another (each re-run resumes what the one before left, then is killed in the next stage), then the
same command once more to the end. The final report must equal the reference's (latencies and wall
times excepted, trial numbers included), no finished trial may be lost at any kill, and no re-run may
hang. The tiny model on the fake cost backend: every stage but tuning and timing (tests/reliability/
test_interrupt.py interrupts real tuning; the tuning database and timings are append-only with repair,
tests/reliability/test_corrupt_caches.py).
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.conftest import TINY
from tests.reliability.test_interrupt import drive

#: Stages to kill in, in run order (search twice: warm start and generations), at seeded moments.
KILLS = ["sensitivity", "search", "search", "proxy validation", "evaluation", "learned quantization", "report"]
ARGV = [a for a in TINY if not a.startswith(("search.n_trials", "search.proxy_validation"))] + [
    "search.n_trials=150", "search.proxy_validation=6", "search.proxy_validation_samples=32",
    "search.ptq=adaround", "search.ptq_iters=30"]
#: The seeded moments of each chaos test. Each seed is a whole chain of kills (40-90 s on 2 cores); CI runs
#: one per test, MPSEARCH_CHAOS_ALL=1 both (the second seeds were kept for the moments they once caught:
#: seed 8's kill after the evaluation's compile and timing ended, 2026-12-05).
ALL_SEEDS = os.environ.get("MPSEARCH_CHAOS_ALL") == "1"
STAGE_SEEDS = [19, 20] if ALL_SEEDS else [19]
TUNING_SEEDS = [7, 8] if ALL_SEEDS else [8]
#: A resumed run may take this much longer than the uninterrupted one before it counts as a hang.
HANG_FACTOR = 3.0

_VOLATILE = re.compile(r"seconds|timings|latency_ms|std_ms|^run_dir$|^versions$")
_NUMBER_WITH_TIME_UNIT = re.compile(r"\d+(\.\d+)?(e-?\d+)? ?(s|ms)\b")


def report_content(run_dir: Path) -> Any:
    """summary.json without what legitimately differs between two runs: wall times and latencies."""
    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if not _VOLATILE.search(str(k))}
        if isinstance(x, list):
            return [clean(v) for v in x]
        if isinstance(x, str):
            return _NUMBER_WITH_TIME_UNIT.sub("<t>", x)
        return x

    return clean(json.loads((run_dir / "summary.json").read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("seed", STAGE_SEEDS)  # a seeded moment in each stage
def test_kill_9_in_every_stage_then_rerun_gives_the_uninterrupted_report(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    (tmp_path / "ref").mkdir()
    (tmp_path / "chaos").mkdir()
    runs = [{"cwd": str(tmp_path / "ref"), "reference": True}]
    runs += [{"cwd": str(tmp_path / "chaos"), "stage": stage, "signal": "KILL", "fraction": rng.uniform(0.05, 0.6)}
             for stage in KILLS]
    runs += [{"cwd": str(tmp_path / "chaos")}]
    res = drive(tmp_path, ARGV, runs, backend={}, timeout=1500)
    ref, killed, final = res["runs"][0], res["runs"][1:-1], res["runs"][-1]
    assert ref["rc"] == 0, ref["stderr"][-3000:]
    assert final["rc"] == 0, final["stderr"][-3000:]
    assert "Traceback" not in final["stderr"], final["stderr"][-3000:]

    landed = [k["signalled_in"] for k in killed]
    for k in killed:
        # killed; or, never signalled, finished before its moment came (see below), with nothing amiss
        assert k["rc"] == -9 or (k["signalled_in"] is None and k["rc"] == 0), (k["rc"], k["stderr"][-2000:])
        assert k["seconds"] < HANG_FACTOR * ref["seconds"] + 30, k["stages"]  # no re-run hung
    # Seeded moments inside each stage, as fractions of the stage's length in the reference run; on a
    # loaded machine a stage can run shorter than it did there and be over by then (the last one: the
    # whole run, seen once in CI with other jobs on the machine), but most kills land where they were
    # aimed, and in the long stages.
    long = {"search", "evaluation", "learned quantization", "report"}
    assert len(long & set(landed)) >= len(long) - 1, landed
    assert sum(a == b for a, b in zip(landed, KILLS)) >= len(KILLS) - 2, (landed, res["reference_durations"])
    assert final["seconds"] < HANG_FACTOR * ref["seconds"] + 30

    # No finished trial lost at any kill, and the resumed study is the uninterrupted one.
    (journal,) = final["trials"]
    reference_trials = ref["trials"][journal]
    for k in killed:
        for trial in k["trials"].get(journal, []):
            assert trial in final["trials"][journal], trial
    assert final["trials"][journal] == reference_trials

    run_dir = Path(journal).parent
    assert report_content(tmp_path / "chaos" / run_dir) == report_content(tmp_path / "ref" / run_dir)
    for name in ("pareto.csv", "report.md", "report.html", "candidates"):
        assert (tmp_path / "chaos" / run_dir / name).exists()


@pytest.mark.slow
@pytest.mark.tvm
@pytest.mark.parametrize("seed", TUNING_SEEDS)  # a seeded moment in each
def test_kill_9_while_tuning_and_timing_kernels_then_rerun_loses_nothing(tmp_path: Path, seed: int) -> None:
    """Real MetaSchedule tuning (1 trial a kernel), kernel timing and end-to-end timing, killed at seeded
    moments of each (the first two in the hardware-cost stage, the last within the first 0.3 s of
    evaluation, while it takes the tiny model's accuracies; the compile and timing after them can
    end in under a second now that baselines' timings are cached, and seed 8's 1.1 s outlived it): the re-run finishes, every complete line of the tuning database and
    the timing caches is still there (a repaired database drops only unfinished lines), and the report
    is written. Latencies differ from run to run, so the front is not compared here."""
    rng = random.Random(seed)
    argv = [a for a in TINY if not a.startswith("search.n_trials")] + [
        "search.n_trials=40", "hw_profile.trials_per_task=1", "hw_profile.threads=1"]
    # Moments by the files the stage writes: after a seeded number of tuning records, then (the re-run
    # tunes the rest first) after a seeded number of kernel timings.
    runs = [{"cwd": str(tmp_path), "signal": "KILL", "file": ".mpsearch-cache/tvm/*/database_tuning_record.json",
             "min_lines": rng.randint(1, 8)},
            {"cwd": str(tmp_path), "signal": "KILL", "file": ".mpsearch-cache/tvm/*/costs.jsonl",
             "min_lines": rng.randint(1, 10)},
            {"cwd": str(tmp_path), "signal": "KILL", "stage": "evaluation", "delay_s": rng.uniform(0.05, 0.3)}]
    runs += [{"cwd": str(tmp_path)}]
    res = drive(tmp_path, argv, runs, backend=None, timeout=1500)
    *killed, final = res["runs"]
    assert final["rc"] == 0 and "Traceback" not in final["stderr"], final["stderr"][-3000:]
    for k, stage in zip(killed, ("hardware cost", "hardware cost", "evaluation")):
        counts = {name: len(lines) for name, lines in k["cache_lines"].items()}
        assert k["rc"] == -9 and k["signalled_in"] == stage, (k["rc"], k["stages"], counts)
        assert any(n.endswith("database_tuning_record.json") and c for n, c in counts.items()), counts
        for name, lines in k["cache_lines"].items():
            kept = set(final["cache_lines"].get(name, []))
            assert set(lines) <= kept, f"{name}: {len(set(lines) - kept)} complete line(s) lost"
    assert any(n.endswith("costs.jsonl") and lines for n, lines in killed[1]["cache_lines"].items())
    assert next(Path(tmp_path, "results").glob("*/report.md")).is_file()
