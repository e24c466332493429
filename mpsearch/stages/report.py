"""The run folder: opened once the inputs are known to be usable, filled by the ``report`` stage (the
candidates, cost table, sensitivity, report prose and :func:`~mpsearch.report.write_report`'s files)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from mpsearch.config import SearchConfig
from mpsearch.console import LOG_NAME, RunLog
from mpsearch.hardware.base import Backend, LayerCostTable
from mpsearch.hardware.profile import HwProfile
from mpsearch.quant.prepare import PreparedModel
from mpsearch.report import EvaluatedCandidate, RunSummary, write_report
from mpsearch.search import pair_label
from mpsearch.sensitivity import ADDITIVE_FALLBACK, CandidateProxy, SensitivityResult, signals
from mpsearch.stages.search import Searched
from mpsearch.stages.validate import ProxyValidation
from mpsearch.storage import atomic_write_text

log = logging.getLogger("mpsearch.pipeline")  # the run's console lines keep their logger name


@dataclass
class RunOutcome:
    run_dir: Path
    summary: RunSummary
    table: LayerCostTable
    files: dict[str, Path] = field(default_factory=dict)


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("mpsearch", "torch", "apache-tvm", "optuna", "hydra-core", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def open_run_folder(run_dir: Path, config: Mapping[str, Any], tvm_log: RunLog | None) -> None:
    """Make ``run_dir`` with its ``config.json`` and move the TVM log into it (``tvm.log``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2) + "\n")
    if tvm_log is not None:
        tvm_log.move_to(run_dir / LOG_NAME)
    log.info("run folder: %s", run_dir)


def write_artifacts(run_dir: Path, evaluated: Sequence[EvaluatedCandidate], table: LayerCostTable,
                    sensitivity: SensitivityResult) -> None:
    """``candidates/<label>.json`` (each evaluated bit config), ``cost_table.json`` and ``sensitivity.json``."""
    cand_dir = run_dir / "candidates"
    cand_dir.mkdir(exist_ok=True)
    for e in evaluated:
        atomic_write_text(cand_dir / f"{e.label}.json", e.candidate.to_json() + "\n")
    atomic_write_text(run_dir / "cost_table.json", table.to_json() + "\n")
    atomic_write_text(run_dir / "sensitivity.json", sensitivity.to_json() + "\n")


def report_notes(backend: Backend, profile: HwProfile, table: LayerCostTable, search_cfg: SearchConfig,
                 searched: Searched, joint: CandidateProxy | None, prepared: PreparedModel,
                 groups: Sequence[Sequence[str]] | None, validation: Mapping[str, Any] | None) -> list[str]:
    """The report's notes on how the numbers were made: latency source, search, proxy, layers, groups,
    proxy validation."""
    tuning = profile.tuning
    notes = [
        f"Latencies: TVM-compiled code on {backend.describe()}, mean over {profile.measure.repeat} repeats of "
        f"{profile.measure.number} calls, candidates measured interleaved in rounds so that machine drift "
        f"hits all alike; kernels tuned with MetaSchedule ({tuning.strategy}, {tuning.trials_per_task} trials "
        "per kernel). The ± is the standard deviation over repeats: on a shared 2-core VM it is large.",
        f"Predicted latency = {table.scale:.3f} × the sum of per-layer kernel latencies (each kernel timed "
        f"alone) + {table.other_s * 1e3:.3f} ms for the rest of the model (pooling, reshape, VM dispatch), "
        f"fitted on uniform candidates ({table.calibration.get('method', 'not calibrated')}"
        + (f", {table.calibration['fit_mape_pct']:.1f}% mean error on them" if table.calibration.get("fit_mape_pct")
           is not None else "") + ").",
    ] if backend.latency_source == "measured" else [f"Latencies for {backend.describe()}."]
    notes += backend.report_notes() + [
        f"Search: {search_cfg.sampler}, {search_cfg.n_trials} trials minimising "
        f"{', '.join(searched.settings.metric_names())} (proxy: {search_cfg.sensitivity}; costs predicted); "
        f"{len(searched.front)} feasible Pareto candidates, {len(searched.chosen)} evaluated for real (spread "
        "along latency).",
    ]
    if joint is not None:
        notes.append(f"The proxy objective is {joint.name}, scored on each whole candidate "
                     f"({joint.computed} computed this run in {joint.seconds:.1f} s, the rest cached); the exact "
                     f"ILP, the warm start and the front comparison use {ADDITIVE_FALLBACK}'s additive score.")
    floats = "; ".join(f"{w} ({why})" for w, why in prepared.float_layers.items())
    notes.append(f"Layers: {len(prepared.layer_names)} quantizable conv/linear layers found by the torch.export "
                 "front end" + (f"; left in float: {floats}" if prepared.float_layers else "; none left in float") + ".")
    if groups:
        notes.append("Layer groups (one precision each, one search variable each): "
                     + "; ".join(" + ".join(g) for g in groups) + ".")
    if validation is not None:
        notes.append(
            f"Proxy validation: {validation['n']} random candidates (each with its own random mix of bit pairs), "
            f"top-1 drop vs FP32 measured on the first {validation['test_samples']} test images; Spearman "
            "rank correlation of each estimator's proxy with that drop: " + ", ".join(
                f"{k} {'n/a' if r is None else f'{r:.2f}'}" for k, r in validation["spearman"].items()) + ".")
    return notes


def report(run_dir: Path, config: dict[str, Any], model_name: str, search_cfg: SearchConfig, profile: HwProfile,
           backend: Backend, table: LayerCostTable, prepared: PreparedModel, sensitivity: SensitivityResult,
           joint: CandidateProxy | None, searched: Searched, proxy: ProxyValidation,
           groups: list[list[str]] | None, evaluated: list[EvaluatedCandidate], notes: list[str],
           timings: dict[str, float], peers: dict[str, Any] | None = None) -> RunOutcome:
    """Write the run folder's artifacts and report; ``notes`` (from the evaluation and learned
    quantization) come first, ``timings`` is the run's live per-stage dict, ``peers`` the peers stage's
    rows (:attr:`~mpsearch.report.tables.RunSummary.peers`).

    Args:
        config: The composed config as a plain dict (``RunConfig.to_dict``).
        model_name: ``cfg.model.display_name()``.
    """
    write_artifacts(run_dir, evaluated, table, sensitivity)
    layers = prepared.layer_names
    layer_latency = pd.DataFrame(
        {pair_label(p): [table.latency_s[n][p] * 1e3 for n in layers] for p in table.pairs}, index=layers)
    notes = notes + report_notes(backend, profile, table, search_cfg, searched, joint, prepared, groups,
                                 proxy.validation)
    summary = RunSummary(
        run_dir=run_dir, model=model_name, hw_profile=profile.name, device=backend.describe(),
        layers=layers, layer_macs={li.name: li.macs for li in prepared.layers},
        layer_params={li.name: li.params for li in prepared.layers}, candidates=evaluated,
        layer_latency_ms=layer_latency, config=config, timings_s=timings,
        versions=versions(), notes=notes + [searched.comparison.note()], proxy_validation=proxy.validation,
        search_fronts=searched.comparison.fronts, latency_source=backend.latency_source, layer_groups=groups,
        sensitivity={k: v for r in proxy.results.values() for k, v in signals(r).items()}, peers=peers)
    files = write_report(summary)
    return RunOutcome(run_dir, summary, table, files)
