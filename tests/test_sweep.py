"""Sweep summaries: picks, bit-widths and portability across profiles (fast, table backend), and a real
two-profile x two-budget ``mpsearch --multirun`` on the default model, one profile measured with TVM and
one estimated by roofline (slow)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mpsearch.candidate import Candidate
from mpsearch.config import RunConfig, register_configs
from mpsearch.export import RunFolder
from mpsearch.hardware.base import LayerCostTable
from mpsearch.pipeline import run
from mpsearch.sweep import SweepSummaryCallback, jobs_from_run_dirs, main, summarize, summarize_sweep
from mpsearch.testing import TableBackend
from tests.conftest import TunedCache

REPO = Path(__file__).resolve().parents[1]

class SlowerTable(TableBackend):
    """The table backend, ``factor`` times slower: a second, different 'hardware'."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def layer_latency(self, macs: int, pair):  # type: ignore[override]
        return TableBackend.layer_latency(macs, pair) * (self.factor if max(pair) < 32 else 1.0)


def _factory(profile, cache_dir, progress):
    # host_cpu_1t: quantized kernels 3x slower, so the two profiles' picks differ
    return SlowerTable(3.0 if profile.name == "host_cpu_1t" else 1.0)


def _config(root: Path, profile: str, weight_kib: float | None) -> RunConfig:
    cfg = RunConfig()
    cfg.model.name, cfg.model.factory, cfg.model.input_shape = "tiny", "mpsearch.testing:tiny_resnet", [1, 1, 8, 8]
    cfg.data.factory, cfg.data.calib_samples, cfg.data.test_samples = "mpsearch.testing:synthetic_split", 64, 128
    cfg.search.n_trials, cfg.search.sensitivity_samples, cfg.search.measure_front = 40, 16, 4
    cfg.search.proxy_validation = 0
    cfg.hw_profile.name = profile
    cfg.budget.weight_kib = weight_kib
    cfg.results_dir, cfg.cache_dir, cfg.progress = str(root / "results"), str(root / "cache"), False
    return cfg


_TABLE_RUNS: dict[str, list[Path]] = {}


@pytest.fixture(scope="session")
def table_runs(tmp_path_factory) -> list[Path]:
    """Four finished runs (host_cpu, host_cpu_1t) x (2 KiB, no budget), costs from table backends; made
    once per session (tests/test_export.py uses them too), sharing one cache, so sensitivity runs once."""
    if "runs" not in _TABLE_RUNS:
        root = tmp_path_factory.mktemp("table_sweep")
        _TABLE_RUNS["runs"] = [run(_config(root, prof, kib), _factory).run_dir
                               for prof in ("host_cpu", "host_cpu_1t") for kib in (2.0, None)]
    return _TABLE_RUNS["runs"]


def test_summary_picks_bits_and_portability(table_runs: list[Path], tmp_path: Path) -> None:
    jobs = jobs_from_run_dirs(table_runs)
    s = summarize(jobs, "t")
    assert s.profiles == ["host_cpu", "host_cpu_1t"] and (s.jobs["status"] == "ok").all()
    # each pick is the most accurate front candidate within the job's weight budget
    for job, (_, row) in zip(jobs, s.jobs.iterrows()):
        front = job.run.front()
        fits = front if job.budget[1] is None else front[front["weight_kib"] <= job.budget[1]]
        assert row["accuracy"] == fits["accuracy"].max() and row["weight_kib"] <= (job.budget[1] or 1e9)
    assert s.bits.shape == (5, 4) and s.bits.isin(["W4A4", "W4A8", "W8A4", "W8A8", "W32A32"]).all().all()

    port = s.portability
    assert len(port) == 4 * 2 and set(port["priced_on"]) == {"host_cpu", "host_cpu_1t"}
    for _, r in port.iterrows():
        job = next(j for j in jobs if j.name == r["job"])
        other = next(j for j in jobs if j.profile == r["priced_on"] and j.budget == job.budget)
        cand = job.run.candidate(r["pick"])
        measured = other.run.frame[other.run.frame["key"] == cand.key()]["measured_latency_ms"].dropna()
        if r["source"] == "measured":
            if r["priced_on"] == job.profile:
                assert r["vs_native"] == pytest.approx(1.0)
            assert r["latency_ms"] in set(pd.concat(
                [o.run.frame[o.run.frame["key"] == cand.key()]["measured_latency_ms"]
                 for o in jobs if o.profile == r["priced_on"]]).dropna())
        else:
            assert r["source"] == "priced by cost table" and measured.empty
            table = LayerCostTable.from_json((other.run_dir / "cost_table.json").read_text())
            assert r["latency_ms"] == pytest.approx(table.predict_latency(cand) * 1e3)
    # a quantized pick of the fast profile costs more on the 3x-slower one
    cross = port[(port["picked_on"] == "host_cpu") & (port["priced_on"] == "host_cpu_1t")]
    own = port[(port["picked_on"] == "host_cpu") & (port["priced_on"] == "host_cpu")]
    assert (cross["latency_ms"].to_numpy() >= own["latency_ms"].to_numpy()).all()


def test_summary_files_and_cli(table_runs: list[Path], tmp_path: Path, capsys) -> None:
    assert main([*map(str, table_runs), "--results-dir", str(tmp_path), "--name", "mine"]) == 0
    out = tmp_path / "mine"
    for name in ("summary.md", "summary.csv", "bits.csv", "portability.csv", "summary.png"):
        assert (out / name).is_file(), name
    md = (out / "summary.md").read_text()
    assert "## Portability" in md and "on host_cpu_1t" in md and "(measured)" in md and "× native" in md
    assert len(pd.read_csv(out / "summary.csv")) == 4
    assert main([str(tmp_path / "nothing-here")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_hydra_config_registers_the_callback_and_the_1t_profile() -> None:
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hw_profile=host_cpu_1t"], return_hydra_config=True)
    assert cfg.hw_profile.name == "host_cpu_1t"
    assert isinstance(instantiate(cfg.hydra.callbacks.sweep_summary), SweepSummaryCallback)
    from mpsearch.hardware.profile import load_profile

    assert load_profile("host_cpu_1t").resolved_threads() == 1


# -- real: mpsearch --multirun with TVM on the default model -------------------------------------------


@dataclass
class TVMSweep:
    sweep_dir: Path | None
    run_dirs: list[Path]
    summary_dir: Path | None
    env: dict[str, str]
    seconds: float
    log: str = ""
    seeded_kernels: int = 0  # kernels tuned before the sweep, into the schedules it was given


_SWEEP: dict[str, TVMSweep] = {}
_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

#: The acceptance sweep (issue #6): ResNet-20 (the default model) on the host, one thread, measured with TVM
#: at a tiny budget (1 MetaSchedule trial per kernel, W8A8/FP32 only, small data), and on a Raspberry Pi 4
#: priced by roofline (compile-only: built for aarch64, never run), at two weight budgets.
DEFAULT_SWEEP = [
    "--multirun", "hw_profile=host_cpu_1t,rpi4_estimated", "budget.weight_kib=400,1100", "model=resnet20_fmnist",
    "data.calib_samples=64", "data.test_samples=256", "search.sensitivity=fisher", "search.sensitivity_samples=16",
    "search.proxy_validation=0", "search.n_trials=20", "search.measure_front=2", "search.ilp_budgets=2",
    "search.w_bits=[8,32]", "search.a_bits=[8,32]", "hw_profile.trials_per_task=1", "progress=false",
]


def run_default_sweep(root: Path, tuned: TunedCache | None = None) -> TVMSweep:
    """``mpsearch --multirun`` of :data:`DEFAULT_SWEEP` into ``root``; run once per session. ``tuned``: the
    session's tuning of the default model for host_cpu_1t, whose schedules (not timings) are copied into
    the sweep's cache first, so the sweep tunes nothing (the tuning is shared with test_default_model)."""
    import time

    if "default" in _SWEEP:
        return _SWEEP["default"]
    if tuned is not None:
        dest = root / "cache" / "tvm" / tuned.dir.name
        dest.mkdir(parents=True)
        for name in ("database_workload.json", "database_tuning_record.json"):
            shutil.copy2(tuned.dir / name, dest / name)
    args = [sys.executable, "-m", "mpsearch.cli", *DEFAULT_SWEEP, f"results_dir={root / 'results'}",
            f"cache_dir={root / 'cache'}", f"hydra.sweep.dir={root / 'sweep'}"]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=root, env=_ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = sorted(p for p in (root / "results").iterdir() if p.name.startswith("resnet20_fmnist-"))
    summaries = list((root / "results").glob("sweep-resnet20_fmnist-*/summary.md"))
    assert len(summaries) == 1, proc.stderr[-4000:]
    _SWEEP["default"] = TVMSweep(root / "sweep", runs, summaries[0].parent, _ENV, time.perf_counter() - start,
                                 proc.stdout + proc.stderr, tuned.tuned_kernels if tuned else 0)
    return _SWEEP["default"]


@pytest.fixture(scope="session")
def default_sweep(tmp_path_factory, default_model_tuned: TunedCache) -> TVMSweep:
    pytest.importorskip("tvm")
    return run_default_sweep(tmp_path_factory.mktemp("default_sweep"), default_model_tuned)


@pytest.fixture(scope="session")
def tvm_sweep(tmp_path_factory) -> TVMSweep:
    """A finished run of the tiny model measured with TVM on host_cpu_1t (1 trial per kernel, W8A8/FP32),
    for tests/test_export.py. In process, so it shares the session's MetaSchedule start-up cost."""
    pytest.importorskip("tvm")
    import time

    from mpsearch.hardware.export_lib import use_threads
    from mpsearch.testing import tiny_run_config

    if "tiny" not in _SWEEP:
        root = tmp_path_factory.mktemp("tvm_tiny_run")
        cfg = tiny_run_config(root, hw_profile__name="host_cpu_1t", hw_profile__trials_per_task=1,
                              search__n_trials=20, search__measure_front=2, search__proxy_validation=0,
                              search__sensitivity_samples=16, search__w_bits=[8, 32], search__a_bits=[8, 32])
        before = os.environ.get("TVM_NUM_THREADS")
        start = time.perf_counter()
        try:
            out = run(cfg)  # the real TVM backend
        finally:  # host_cpu_1t set one thread for this process's TVM pool: give the others theirs back
            use_threads(int(before) if before else (os.cpu_count() or 1))
        _SWEEP["tiny"] = TVMSweep(None, [out.run_dir], None, _ENV, time.perf_counter() - start)
    return _SWEEP["tiny"]


@pytest.mark.tvm
@pytest.mark.slow
def test_default_model_sweep_measured_and_estimated_profiles(default_sweep: TVMSweep) -> None:
    """Issue #6, acceptance 1: two profiles x two budgets on the default model, four run folders, and a
    summary whose portability table prices the cross-target profile by roofline, labelled so."""
    s = default_sweep
    assert len(s.run_dirs) == 4  # one content-addressed run folder per job
    assert len(list(s.sweep_dir.glob("*/.hydra/config.yaml"))) == 4  # each job's composed config
    configs = [json.loads((r / "config.json").read_text()) for r in s.run_dirs]
    assert sorted((c["hw_profile"]["name"], c["hw_profile"]["cost"]) for c in configs) == [
        ("host_cpu_1t", None), ("host_cpu_1t", None), ("rpi4", "estimated"), ("rpi4", "estimated")]
    estimated = {r for r, c in zip(s.run_dirs, configs) if c["hw_profile"]["cost"] == "estimated"}
    for r in s.run_dirs:
        summary = json.loads((r / "summary.json").read_text())
        front = RunFolder.load(r).front()
        assert front["measured_latency_ms"].notna().all()
        md = (r / "report.md").read_text()
        if r in estimated:
            assert summary["latency_source"] == "estimated" and (front["latency_source"] == "estimated").all()
            assert "(estimated latencies: roofline, not measured)" in md and "measured (ms)" not in md
            assert "Compile-only check for rpi4" in md  # the model was built for the board (or says why not)
            if shutil.which("aarch64-linux-gnu-gcc"):
                assert "built for llvm aarch64-linux-gnu cortex-a72 (AArch64 DYN shared object" in md
        else:
            assert summary["latency_source"] == "measured" and (front["latency_source"] == "measured").all()
            assert "estimated" not in md.lower().replace("estimator", "")
    # the host's kernels were tuned once per session (tests/conftest.py, same profile, threads and measure
    # settings: the same cache key) and both host jobs found every schedule in the cache: no job tuned.
    # The first host job timed the kernels; the second reused those timings through the cache. Nothing
    # was tuned or timed for the estimated board.
    assert s.seeded_kernels > 0
    assert not re.findall(r"tvm_backend\]\[INFO\] - tuning (\d+) kernel", s.log), s.log[-3000:]
    timed = re.findall(r"tvm_backend\]\[INFO\] - measuring (\d+) kernel", s.log)
    assert len(timed) == 1 and int(timed[0]) > 0, s.log[-3000:]
    caches = sorted(p.name.rsplit("-", 1)[0] for p in (s.run_dirs[0].parents[1] / "cache" / "tvm").iterdir())
    assert caches == ["host_cpu_1t"]

    jobs = pd.read_csv(s.summary_dir / "summary.csv")
    assert len(jobs) == 4 and (jobs["status"] == "ok").all() and jobs["latency_ms"].gt(0).all()
    assert sorted(jobs["profile"]) == ["host_cpu_1t", "host_cpu_1t", "rpi4 (estimated)", "rpi4 (estimated)"]
    assert set(jobs[jobs["profile"] == "rpi4 (estimated)"]["latency_source"]) == {"estimated (roofline)"}
    assert set(jobs[jobs["profile"] == "host_cpu_1t"]["latency_source"]) == {"measured"}
    port = pd.read_csv(s.summary_dir / "portability.csv")
    assert len(port) == 8 and port["latency_ms"].gt(0).all()
    on_board = port[port["priced_on"] == "rpi4 (estimated)"]
    assert set(on_board["source"]) == {"estimated (roofline)"}  # never called measured
    assert set(port[port["priced_on"] == "host_cpu_1t"]["source"]) <= {"measured", "priced by cost table"}
    board_table = RunFolder.load(sorted(estimated)[0]).cost_table()
    for _, r in on_board[on_board["picked_on"] == "host_cpu_1t"].iterrows():  # the host's picks on the board
        cand = RunFolder.load(next(p for p in s.run_dirs if p.name == jobs.set_index("job").loc[r["job"], "run"]))\
            .candidate(r["pick"])
        assert r["latency_ms"] == pytest.approx(board_table.predict_latency(cand) * 1e3)
    md = (s.summary_dir / "summary.md").read_text()
    assert "## Portability" in md and "on rpi4 (estimated)" in md and "(estimated (roofline))" in md
    assert "Profiles marked (estimated) were not measured" in md and "## Chosen bit-widths per layer" in md
    # the summary is rebuilt from stored results alone, identically
    assert summarize_sweep([s.sweep_dir])["summary_md"].read_text() == md


def test_unfinished_jobs_are_listed_not_fatal(table_runs: list[Path], tmp_path: Path) -> None:
    jobs = jobs_from_run_dirs([table_runs[0], tmp_path / "missing-run"])
    s = summarize(jobs, "t")
    assert s.jobs.loc[1, "status"].startswith("run folder") and len(s.portability) == 1
    assert Candidate.from_json((table_runs[0] / "candidates" / f"{s.jobs.loc[0, 'pick']}.json").read_text())
