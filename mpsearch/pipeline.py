"""One run: model → calibration → sensitivity → hardware cost → search → real evaluation → report.

:func:`run` is the list of stages (:mod:`mpsearch.stages`, one function each); the names tests,
benchmarks and :mod:`mpsearch.export` import from here are re-exported.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch

from mpsearch.config import RunConfig, validate
from mpsearch.console import RunLog, run_log
from mpsearch.quant.calibration import calibrate, calibrate_for
from mpsearch.quant.prepare import prepare_model
from mpsearch.search import activation_bits, bit_pairs
from mpsearch.stages import (
    BASELINES, AccuracyCache, BackendFactory, RunOutcome, StageTimer, accuracy_context, batches, build_model,
    StepBack, cached_accuracy, check_data, configured_profile, default_backend, estimate_sensitivity, evaluate,
    evaluate_accuracy, hardware_cost, learn, load, load_candidate, load_data, open_run_folder, preflight, report,
    search, search_problem, search_settings, skipped_note, to_evaluate, validate_proxy, wants_learning,
)
from mpsearch.stages.peers import has_peers, run_peers
from mpsearch.storage import atomic_write_text

log = logging.getLogger(__name__)


def run(cfg: RunConfig, backend_factory: BackendFactory = default_backend) -> RunOutcome:
    """Run the whole search for ``cfg`` and write its report; re-running the same config resumes.

    TVM's own output (MetaSchedule's logs, C++ warnings) goes to ``tvm.log`` in the run folder unless
    ``cfg.verbose``; until the run folder exists it is kept in ``<cache_dir>/logs/``."""
    validate(cfg)
    run_dir = Path(cfg.results_dir) / (cfg.run_name or cfg.default_run_name())
    pending = None if cfg.verbose else Path(cfg.cache_dir) / "logs" / f"{run_dir.name}.log"
    with run_log(pending) as tvm_log:
        try:
            return _run(cfg, backend_factory, run_dir, tvm_log)
        finally:
            if tvm_log is not None and pending is not None and tvm_log.path == pending:
                _drop_or_point_at(pending, tvm_log.holds_only_warnings)  # stopped before the run folder was made


def _drop_or_point_at(log_path: Path, nothing_from_tvm: bool) -> None:
    """A run that stopped before it had a run folder: its TVM log is removed if TVM wrote nothing to it
    (bad input leaves nothing behind; library warnings alone are not worth a file), else kept where it is,
    and said where."""
    if log_path.exists() and nothing_from_tvm:
        log_path.unlink()
        with contextlib.suppress(OSError):
            log_path.parent.rmdir()
    elif log_path.exists():
        log.info("TVM's output of this run: %s", log_path)


def _run(cfg: RunConfig, backend_factory: BackendFactory, run_dir: Path, tvm_log: RunLog | None) -> RunOutcome:
    s, timer, cache_dir = cfg.search, StageTimer(), Path(cfg.cache_dir)
    torch.manual_seed(s.seed)
    profile = configured_profile(cfg.hw_profile)
    pairs = bit_pairs(s.w_bits, activation_bits(s.a_bits), s.weight_only)
    profile.precisions.check(profile.name, pairs)  # e.g. fp16 on a profile without it: one line, before any work
    with timer.stage("load"):
        loaded = load(cfg.model, cfg.data, s.groups, s.group_residual, cfg.candidate)
        prepared = loaded.prepared
    with timer.stage("device"):  # before calibration and sensitivity: an unreachable board fails in seconds
        backend = backend_factory(profile, cache_dir, cfg.progress)
    a_bits = activation_bits(s.a_bits, backend.dot_isa, profile.precisions.a_bits)
    if a_bits != activation_bits(s.a_bits):  # the default menu, widened for this target
        pairs = bit_pairs(s.w_bits, a_bits, s.weight_only)
        log.info("activation widths %s: 8-bit activations take a slower dot than 7-bit ones on this target's "
                 "%s kernels (set search.a_bits to choose them yourself)", ", ".join(map(str, a_bits)), backend.dot_isa)
    with timer.stage("calibration"):
        ranges = calibrate_for(prepared.graph_module, loaded.layers, loaded.calib, s)
    with timer.stage("sensitivity"):
        sens = estimate_sensitivity(s.sensitivity, prepared, ranges, loaded.calib, pairs, s.sensitivity_samples,
                                    cfg.data.calib_samples, s.seed, cache_dir)
    with timer.stage("hardware cost"):
        table = hardware_cost(backend, prepared, ranges, pairs, loaded.given)
    problem = search_problem(prepared, pairs, sens.score, table, loaded.groups, cfg.budget.activation_kib,
                             cfg.budget.bops_g)
    problem.check_budgets(cfg.budget.latency_ms, cfg.budget.weight_kib)
    # The run folder is made only once the inputs are known to be usable: bad input leaves nothing behind.
    open_run_folder(run_dir, cfg.to_dict(), tvm_log)
    with timer.stage("search"):
        searched = search(problem, search_settings(s, cfg.budget, run_dir.name), run_dir / "study.journal",
                          s.measure_front, s.ilp_budgets, cfg.progress, proxy=sens.joint)
    log.info("front: %d feasible non-dominated candidates, evaluating %d", len(searched.front), len(searched.chosen))
    with timer.stage("proxy validation"):
        proxy = validate_proxy(s, prepared, pairs, ranges, sens, loaded.calib, loaded.test,
                               cfg.data.calib_samples, cache_dir)
    accuracy = cached_accuracy(prepared, ranges, loaded.test, cache_dir)
    todo = to_evaluate(searched.chosen, loaded.layers, loaded.given, searched.pick)
    with timer.stage("evaluation"):
        evaluation = evaluate(todo, accuracy, backend, prepared, ranges, table, sens.score, sens.joint,
                              s.max_failure_rate, cfg.progress,
                              StepBack(problem, s.accuracy_drop_pts, s.step_back, cfg.budget.weight_kib))
    notes = [n for n in [skipped_note(sens.result)] if n] + evaluation.notes
    if wants_learning(s):
        with timer.stage("learned quantization"):
            notes += learn(s, prepared, ranges, loaded.calib, loaded.test, evaluation.candidates, run_dir, cache_dir)
    peers = None
    if cfg.peers and has_peers(backend):
        with timer.stage("peers"):
            peers = run_peers(backend, loaded.model, prepared, ranges, loaded.calib, loaded.test,
                              evaluation.candidates, s.accuracy_drop_pts)
        if peers is not None:  # the report's Peers section; peers.json kept should the report fail
            log.info("%s", peers.note())
            atomic_write_text(run_dir / "peers.json", json.dumps(peers.to_dict(), indent=1))
    with timer.stage("report"):
        outcome = report(run_dir, cfg.to_dict(), cfg.model.display_name(), s, profile, backend, table, prepared,
                         sens.result, sens.joint, searched, proxy, problem.groups, evaluation.candidates, notes,
                         timer.timings, peers=None if peers is None else peers.to_dict())
    outcome.summary.timings_s = timer.timings
    log.info("report: %s", outcome.files.get("report_md"))
    return outcome


__all__ = [
    "AccuracyCache", "BASELINES", "RunOutcome", "accuracy_context", "batches", "build_model", "cached_accuracy",
    "calibrate", "calibrate_for", "check_data", "configured_profile", "default_backend", "evaluate_accuracy",
    "load_candidate", "load_data", "preflight", "prepare_model", "run",
]
