"""One run: model → calibration → sensitivity → hardware cost → search → real evaluation → report."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from mpsearch import interrupt
from mpsearch.candidate import Bits, Candidate
from mpsearch.config import RunConfig, validate
from mpsearch.console import LOG_NAME, RunLog, run_log
from mpsearch.errors import ConfigError, HardwareError, Interrupted, MPSearchError
from mpsearch.hashing import content_hash
from mpsearch.hardware.base import Backend, LayerCostTable
from mpsearch.hardware.profile import HwProfile, load_profile
from mpsearch.models.registry import load_state_dict, resolve
from mpsearch.quant.calibration import calibrate
from mpsearch.quant.fake import quantize_
from mpsearch.quant.learned import cached_learn, merge
from mpsearch.quant.learners import make_learners
from mpsearch.quant.prepare import PreparedModel, as_inputs, call_model, prepare_model
from mpsearch.report import EvaluatedCandidate, RunSummary, write_report
from mpsearch.storage import JsonLines, atomic_write_bytes, atomic_write_text
from mpsearch.search.groups import check_candidate, layer_groups
from mpsearch.search import (
    SearchProblem, SearchSettings, bit_pairs, feasible_front, front_comparison, ilp_pick, pair_label, run_search,
    spread,
)
from mpsearch.sensitivity import (
    ADDITIVE_FALLBACK, CandidateProxy, SensitivityResult, cached_estimate, first_samples, is_joint, make_estimator,
    make_joint_estimator, random_candidates, score_table, signals, validate_proxies,
)

log = logging.getLogger(__name__)

BackendFactory = Callable[[HwProfile, Path, bool], Backend]
BASELINES: dict[str, Bits] = {"fp32": (32, 32), "int8": (8, 8)}


@dataclass
class RunOutcome:
    run_dir: Path
    summary: RunSummary
    table: LayerCostTable
    files: dict[str, Path] = field(default_factory=dict)


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        log.info("stage: %s", name)
        start = time.perf_counter()
        try:
            yield
            interrupt.check()  # a Ctrl-C that native code swallowed stops the run here at the latest
        except KeyboardInterrupt as e:  # Ctrl-C: name the stage for the CLI's one line
            if isinstance(e, Interrupted):
                raise
            raise Interrupted(name) from e
        except Exception as e:  # a Ctrl-C that TVM turned into its own error on the way out of C++
            if interrupt.requested():
                raise Interrupted(name) from e
            raise
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)


def build_model(cfg: RunConfig) -> torch.nn.Module:
    model = resolve(cfg.model.factory, "model")()
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model factory {cfg.model.factory!r} returned {type(model).__name__}, not an nn.Module")
    if cfg.model.checkpoint:
        load_state_dict(model, cfg.model.checkpoint)
    return model.eval()


def load_data(cfg: RunConfig, split: str, limit: int | None) -> Dataset:
    ds = resolve(cfg.data.factory, "data")(split, limit)
    if len(ds) == 0:
        raise ConfigError(f"data split {split!r} from {cfg.data.factory!r} is empty; give it samples")
    return ds


def batches(ds: Dataset, batch_size: int) -> list[tuple[Any, torch.Tensor]]:
    """``(inputs, label)`` batches; ``inputs`` is a Tensor, or a tuple of Tensors for a several-input
    model (called as ``model(*inputs)``; the collated list becomes a tuple)."""
    out = []
    for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False):
        x = tuple(x) if isinstance(x, (list, tuple)) else x
        out.append((x[0] if isinstance(x, tuple) and len(x) == 1 else x, y))  # one input: a plain Tensor
    return out


def check_data(prepared: PreparedModel, batch: tuple[Any, Any], factory: str) -> None:
    """Raise :class:`ConfigError` when a data batch does not match the declared model inputs."""
    x, y = batch
    given = list(x) if isinstance(x, tuple) else [x]
    declared = prepared.inputs
    if len(given) != len(declared) or not all(isinstance(t, torch.Tensor) for t in given):
        kinds = ", ".join(type(t).__name__ for t in given)
        raise ConfigError(f"data.factory {factory!r} yields {len(given)} input(s) ({kinds}) per sample, the model "
                          f"declares {len(declared)} (model.inputs / model.input_shape); make each sample "
                          "((input, ...), label) with one tensor per declared input")
    for i, (t, spec) in enumerate(zip(given, declared)):
        if str(t.dtype).removeprefix("torch.") != spec.dtype or tuple(t.shape[1:]) != tuple(spec.shape[1:]):
            raise ConfigError(f"data.factory {factory!r}: input {i} is {str(t.dtype).removeprefix('torch.')} "
                              f"{list(t.shape[1:])} per sample, model.inputs[{i}] declares {spec.dtype} "
                              f"{list(spec.shape[1:])}; fix the data factory or model.inputs")
    if not isinstance(y, torch.Tensor) or len(y) != len(given[0]):
        raise ConfigError(f"data.factory {factory!r}: labels are not one tensor entry per sample; make each "
                          "sample ((input, ...), label)")
    with torch.no_grad():  # the search scores top-1 of class logits: say so now, not after the search
        out = call_model(prepared.graph_module, x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or len(out) != len(y):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"the model returns {shape} for a batch of {len(y)}; the search scores top-1 accuracy "
                          "of (batch, classes) logits, so wrap the model to return them (a language model: "
                          "the last token's or pooled logits)")


def preflight(prepared: PreparedModel) -> None:
    """Lower the FP32 model once through TVM's importer: an op it cannot take is one line now, not after
    calibration and sensitivity. Skipped where TVM is not installed (fake backends)."""
    try:
        from mpsearch.hardware.lowering import lower
    except ImportError:
        return
    lower(prepared, Candidate.uniform(prepared.layer_names, 32, 32), {}, batch=1)


def accuracy_context(prepared: PreparedModel, ranges: Mapping[str, tuple[float, float]],
                     data: list[tuple[torch.Tensor, torch.Tensor]]) -> str:
    """The :class:`AccuracyCache` key of a model, its calibration and ALL of ``data`` (every batch's
    values, shapes and dtypes, labels included): two test subsets never share accuracies."""
    return content_hash("accuracy/2", prepared.graph_module.state_dict(), dict(ranges), data, length=16)


class AccuracyCache:
    """Top-1 accuracy of simulated candidates, keyed by model, calibration, data and candidate."""

    def __init__(self, path: Path, context_key: str) -> None:
        self.store = JsonLines(path, required=("accuracy",))
        self.context = context_key

    def get(self, cand: Candidate) -> float | None:
        rec = self.store.get(f"{self.context}-{cand.key()}")
        return None if rec is None else rec["accuracy"]

    def put(self, cand: Candidate, acc: float) -> None:
        self.store.put({"key": f"{self.context}-{cand.key()}", "accuracy": acc})


@torch.no_grad()
def evaluate_accuracy(prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]],
                      data: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy of the fake-quantized model (the same arithmetic the TVM kernels run)."""
    model = quantize_(prepared.copy_module(), candidate, ranges).eval()
    correct = total = 0
    for x, y in data:
        correct += int((call_model(model, x).argmax(1) == y).sum())
        total += len(y)
    return correct / total


def cached_accuracy(prepared: PreparedModel, ranges: Mapping[str, tuple[float, float]],
                    data: list[tuple[torch.Tensor, torch.Tensor]], cache_dir: Path) -> Callable[[Candidate], float]:
    """:func:`evaluate_accuracy` on ``data`` through the run's :class:`AccuracyCache` (same key as the evaluation)."""
    cache = AccuracyCache(Path(cache_dir) / "accuracy.jsonl", accuracy_context(prepared, ranges, data))

    def accuracy(cand: Candidate) -> float:
        acc = cache.get(cand)
        if acc is None:
            acc = evaluate_accuracy(prepared, cand, ranges, data)
            cache.put(cand, acc)
        return acc

    return accuracy


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("mpsearch", "torch", "apache-tvm", "optuna", "hydra-core", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def configured_profile(cfg: RunConfig) -> HwProfile:
    """The hardware profile named by the config, with its per-run overrides applied."""
    # hw_profile.cost=estimated asks for roofline estimates explicitly (never a fallback for an unreachable device)
    profile = load_profile(cfg.hw_profile.name, {"cost": cfg.hw_profile.cost} if cfg.hw_profile.cost else None)
    if cfg.hw_profile.trials_per_task is not None:
        profile = replace(profile, tuning=replace(profile.tuning, trials_per_task=cfg.hw_profile.trials_per_task))
    if cfg.hw_profile.threads is not None:
        profile = replace(profile, threads=cfg.hw_profile.threads)
    return profile


def default_backend(profile: HwProfile, cache_dir: Path, progress: bool) -> Backend:
    if profile.estimated:  # asked for explicitly (profile or hw_profile.cost): roofline, compile-only
        from mpsearch.hardware.estimate import EstimateBackend

        return EstimateBackend(profile, cache_dir, progress=progress)
    from mpsearch.hardware.tvm_backend import TVMBackend

    backend = TVMBackend(profile, cache_dir, progress=progress)
    if profile.device == "local":
        from mpsearch.hardware.export_lib import use_threads

        use_threads(profile.resolved_threads())  # a sweep's jobs share one process and its TVM thread pool
    return backend


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
                _drop_or_point_at(pending)  # stopped before the run folder was made


def _drop_or_point_at(log_path: Path) -> None:
    """A run that stopped before it had a run folder: its TVM log is removed if empty (bad input leaves
    nothing behind), else kept where it is, and said where."""
    if log_path.exists() and log_path.stat().st_size == 0:
        log_path.unlink()
        with contextlib.suppress(OSError):
            log_path.parent.rmdir()
    elif log_path.exists():
        log.info("TVM's output of this run: %s", log_path)


def _run(cfg: RunConfig, backend_factory: BackendFactory, run_dir: Path, tvm_log: RunLog | None) -> RunOutcome:
    timer = _Timer()
    torch.manual_seed(cfg.search.seed)
    profile = configured_profile(cfg)
    pairs = bit_pairs(cfg.search.w_bits, cfg.search.a_bits, cfg.search.weight_only)
    profile.precisions.check(profile.name, pairs)  # e.g. fp16 on a profile without it: one line, before any work
    cache_dir = Path(cfg.cache_dir)
    with timer.stage("load"):
        model = build_model(cfg)
        calib = batches(load_data(cfg, "calib", cfg.data.calib_samples), cfg.data.batch_size)
        test = batches(load_data(cfg, "test", cfg.data.test_samples), cfg.data.batch_size)
        prepared = prepare_model(model, as_inputs(cfg.model.input_specs()))
        check_data(prepared, calib[0], cfg.data.factory)
        check_data(prepared, test[0], cfg.data.factory)
        if len(prepared.inputs) > 1 and cfg.search.ptq != "none":  # before the search
            raise ConfigError(f"search.ptq={cfg.search.ptq} reconstructs one-input models; this model takes "
                              f"{len(prepared.inputs)} inputs: set search.ptq=none (search.qat_epochs works)")
        preflight(prepared)
        layers = prepared.layer_names
        # Layers that take one precision: tied weights (found on the user's model), search.groups, residual adds.
        groups = layer_groups(model, prepared.graph_module, layers, cfg.search.groups, cfg.search.group_residual)
        given = load_candidate(cfg.candidate, layers, groups) if cfg.candidate else None
    with timer.stage("device"):
        # Before calibration and sensitivity, so an unreachable board or a missing GPU fails in seconds.
        backend = backend_factory(profile, cache_dir, cfg.progress)
    with timer.stage("calibration"):
        ranges = calibrate(prepared.graph_module, layers, calib, cfg.search.calibration, cfg.search.percentile,
                           cfg.search.calibration_bits, cfg.search.act_scheme)
    with timer.stage("sensitivity"):
        sens_batches = _first_samples(calib, cfg.search.sensitivity_samples)
        # A joint (whole-candidate) proxy is the search's objective; the ILP and the warm start need an
        # additive score, which then comes from ADDITIVE_FALLBACK (hutchinson).
        joint = _joint_proxy(cfg, cfg.search.sensitivity, prepared, ranges, calib) \
            if is_joint(cfg.search.sensitivity) else None
        estimator = make_estimator(ADDITIVE_FALLBACK if joint else cfg.search.sensitivity,
                                   samples=cfg.search.sensitivity_samples, seed=cfg.search.seed, ranges=ranges,
                                   pairs=pairs)
        sens = cached_estimate(estimator, prepared.graph_module, layers, sens_batches, cache_dir)
        score = score_table(prepared.graph_module, sens, ranges, pairs, sens_batches)
    with timer.stage("hardware cost"):
        extra = list(given.values()) if given is not None else []
        table_pairs = list(dict.fromkeys([*pairs, *BASELINES.values(), *extra]))
        table = backend.cost_table(prepared, ranges, table_pairs)
    problem = SearchProblem(layers, pairs, score, table.layer_latency_s(), table.weight_bytes, table.other_s,
                            table.workspace_bytes or None, table.activation_bytes, cfg.budget.activation_kib,
                            groups, {li.name: li.macs for li in prepared.layers}, cfg.budget.bops_g)
    problem.check_budgets(cfg.budget.latency_ms, cfg.budget.weight_kib)
    # The run folder is made only once the inputs are known to be usable: bad input leaves nothing behind.
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
    if tvm_log is not None:
        tvm_log.move_to(run_dir / LOG_NAME)
    log.info("run folder: %s", run_dir)
    with timer.stage("search"):
        settings = SearchSettings(cfg.search.sampler, cfg.search.n_trials, cfg.search.seed, cfg.budget.latency_ms,
                                  cfg.budget.weight_kib, cfg.search.memory_objective,
                                  warm_start=cfg.search.warm_start, warm_budgets=cfg.search.ilp_budgets,
                                  storage=cfg.search.storage, workers=cfg.search.workers,
                                  objectives=tuple(cfg.search.objectives) if cfg.search.objectives else None,
                                  # a shared database holds many runs' studies; a run's own journal just one
                                  study_name=run_dir.name if cfg.search.storage else "mpsearch")
        study = run_search(problem, settings, run_dir / "study.journal", cfg.progress, proxy=joint)
        front = feasible_front(study, problem)
        if not front:
            raise MPSearchError("the search found no candidate within the budgets; relax budget.* or "
                                "raise search.n_trials")
        chosen = spread(front, cfg.search.measure_front)
        # The exact ILP on the same proxy and budgets: its front for the report, its pick measured for real.
        comparison = front_comparison(study, problem, settings, cfg.search.ilp_budgets)
        pick = ilp_pick(problem, cfg.budget.latency_ms, cfg.budget.weight_kib, [c for _, c in chosen])
    log.info("front: %d feasible non-dominated candidates, evaluating %d", len(front), len(chosen))
    with timer.stage("proxy validation"):
        validation, sens_results = _proxy_validation(cfg, prepared, pairs, ranges, test, sens_batches, sens, score,
                                                     calib, joint)

    context = accuracy_context(prepared, ranges, test)
    acc_cache = AccuracyCache(cache_dir / "accuracy.jsonl", context)
    evaluated: list[EvaluatedCandidate] = []
    todo = [(f"pareto-{i}", "pareto", t.number, c) for i, (t, c) in enumerate(chosen)]
    todo += [(label, "baseline", None, Candidate.uniform(layers, *pair)) for label, pair in BASELINES.items()]
    if given is not None:
        todo.append(("given", "baseline", None, given))
    if pick is not None:
        todo.append((pick[0], "ilp", None, pick[1].candidate))
    notes: list[str] = []
    with timer.stage("evaluation"):
        accuracies = []
        for label, _, _, cand in todo:
            acc = acc_cache.get(cand)
            if acc is None:
                acc = evaluate_accuracy(prepared, cand, ranges, test)
                acc_cache.put(cand, acc)
            accuracies.append(acc)
        measurements = backend.measure_many(prepared, [c for *_, c in todo], ranges)
        _check_failure_rate(todo, measurements, cfg.search.max_failure_rate)
        for (label, kind, trial, cand), acc, meas in zip(todo, accuracies, measurements):
            if not meas.ok:
                notes.append(f"{label}: not measured ({meas.error})")
            proxy = joint(cand) if joint is not None else \
                sum(score[n][cand[n]] for n in layers) if all(cand[n] in score[n] for n in layers) else float("nan")
            evaluated.append(EvaluatedCandidate(
                label=label, candidate=cand, kind=kind, proxy=proxy,
                predicted_latency_ms=table.predict_latency(cand) * 1e3,
                measured_latency_ms=meas.latency_s * 1e3 if meas.ok else None,
                latency_std_ms=meas.std_s * 1e3 if meas.ok else None,
                weight_bytes=table.predict_weight_bytes(cand), accuracy=acc, trial=trial,
                activation_bytes=table.predict_activation_bytes(cand)))
            log.info("%-9s %-28s acc %.4f  latency %s ms (predicted %.3f)", label, cand.describe(), acc,
                     f"{meas.latency_s * 1e3:.3f}" if meas.ok else "n/a", table.predict_latency(cand) * 1e3)

    if cfg.search.ptq != "none" or cfg.search.qat_epochs > 0:
        with timer.stage("learned quantization"):
            notes += _learned_quantization(cfg, prepared, ranges, calib, test, evaluated, run_dir)

    with timer.stage("report"):
        cand_dir = run_dir / "candidates"
        cand_dir.mkdir(exist_ok=True)
        for e in evaluated:
            atomic_write_text(cand_dir / f"{e.label}.json", e.candidate.to_json() + "\n")
        atomic_write_text(run_dir / "cost_table.json", table.to_json() + "\n")
        atomic_write_text(run_dir / "sensitivity.json", sens.to_json() + "\n")
        layer_latency = pd.DataFrame(
            {pair_label(p): [table.latency_s[n][p] * 1e3 for n in layers] for p in table.pairs}, index=layers)
        tuning = profile.tuning
        latency_source = backend.latency_source
        notes += [
            f"Latencies: TVM-compiled code on {backend.describe()}, mean over {profile.measure.repeat} repeats of "
            f"{profile.measure.number} calls, candidates measured interleaved in rounds so that machine drift "
            f"hits all alike; kernels tuned with MetaSchedule ({tuning.strategy}, {tuning.trials_per_task} trials "
            "per kernel). The ± is the standard deviation over repeats: on a shared 2-core VM it is large.",
            f"Predicted latency = {table.scale:.3f} × the sum of per-layer kernel latencies (each kernel timed "
            f"alone) + {table.other_s * 1e3:.3f} ms for the rest of the model (pooling, reshape, VM dispatch), "
            f"fitted on uniform candidates ({table.calibration.get('method', 'not calibrated')}"
            + (f", {table.calibration['fit_mape_pct']:.1f}% mean error on them" if table.calibration.get("fit_mape_pct")
               is not None else "") + ").",
        ] if latency_source == "measured" else [f"Latencies for {backend.describe()}."]
        notes += backend.report_notes() + [
            f"Search: {cfg.search.sampler}, {cfg.search.n_trials} trials minimising "
            f"{', '.join(settings.metric_names())} (proxy: {cfg.search.sensitivity}; costs predicted); "
            f"{len(front)} feasible Pareto candidates, {len(chosen)} evaluated for real (spread along latency).",
        ]
        if joint is not None:
            notes.append(f"The proxy objective is {joint.name}, scored on each whole candidate "
                         f"({joint.computed} computed this run in {joint.seconds:.1f} s, the rest cached); the exact "
                         f"ILP, the warm start and the front comparison use {ADDITIVE_FALLBACK}'s additive score.")
        notes.append(f"Layers: {len(layers)} quantizable conv/linear layers found by the torch.export front end"
                     + ("; left in float: " + "; ".join(f"{w} ({why})" for w, why in prepared.float_layers.items())
                        if prepared.float_layers else "; none left in float") + ".")
        if problem.groups:
            notes.append("Layer groups (one precision each, one search variable each): "
                         + "; ".join(" + ".join(g) for g in problem.groups) + ".")
        if validation is not None:
            notes.append(
                f"Proxy validation: {validation['n']} random candidates (each with its own random mix of bit pairs), "
                f"top-1 drop vs FP32 measured on the first {validation['test_samples']} test images; Spearman "
                "rank correlation of each estimator's proxy with that drop: " + ", ".join(
                    f"{k} {'n/a' if r is None else f'{r:.2f}'}" for k, r in validation["spearman"].items()) + ".")
        summary = RunSummary(
            run_dir=run_dir, model=cfg.model.display_name(), hw_profile=profile.name, device=backend.describe(),
            layers=layers, layer_macs={li.name: li.macs for li in prepared.layers},
            layer_params={li.name: li.params for li in prepared.layers}, candidates=evaluated,
            layer_latency_ms=layer_latency, config=cfg.to_dict(), timings_s=timer.timings,
            versions=_versions(), notes=notes + [comparison.note()], proxy_validation=validation,
            search_fronts=comparison.fronts, latency_source=latency_source, layer_groups=problem.groups,
            sensitivity={k: v for r in sens_results.values() for k, v in signals(r).items()})
        files = write_report(summary)
    summary.timings_s = timer.timings
    log.info("report: %s", files.get("report_md"))
    return RunOutcome(run_dir, summary, table, files)


def _proxy_validation(
    cfg: RunConfig, prepared: PreparedModel, pairs: list[Bits], ranges: Mapping[str, tuple[float, float]],
    test: list[tuple[torch.Tensor, torch.Tensor]], sens_batches: list[tuple[torch.Tensor, torch.Tensor]],
    sens: SensitivityResult, score: Mapping[str, Mapping[Bits, float]],
    calib: list[tuple[torch.Tensor, torch.Tensor]] | None = None, joint: CandidateProxy | None = None,
) -> tuple[dict[str, Any] | None, dict[str, SensitivityResult]]:
    """Rank correlation of each estimator's proxy with the real top-1 drop of random candidates.

    Returns the validation (None when ``search.proxy_validation`` is 0) and every estimator's
    result, the search's own first. Accuracies are cached like the evaluation's (same key recipe,
    so with the whole test split nothing is measured twice).
    """
    s, gm, layers = cfg.search, prepared.graph_module, prepared.layer_names
    results: dict[str, SensitivityResult] = {sens.estimator: sens}
    scores: dict[str, Any] = {sens.estimator: score}
    joints = {joint.name: joint} if joint is not None else {}
    if s.proxy_validation == 0:
        return None, results
    for name in s.proxy_estimators:
        if is_joint(name):
            if name not in joints:
                joints[name] = _joint_proxy(cfg, name, prepared, ranges, calib or sens_batches)
        elif name not in results:
            est = make_estimator(name, samples=s.sensitivity_samples, seed=s.seed, ranges=ranges, pairs=pairs)
            results[name] = cached_estimate(est, gm, layers, sens_batches, Path(cfg.cache_dir))
            scores[name] = score_table(gm, results[name], ranges, pairs, sens_batches)
    data = test
    n_test = sum(len(y) for _, y in test)
    if s.proxy_validation_samples is not None and s.proxy_validation_samples < n_test:
        data, left = [], s.proxy_validation_samples
        for x, y in test:  # the first samples, in the test batches (every input of a tuple sliced alike)
            if left > 0:
                data.append((tuple(t[:left] for t in x) if isinstance(x, tuple) else x[:left], y[:left]))
                left -= len(data[-1][1])
        n_test = s.proxy_validation_samples
    accuracy = cached_accuracy(prepared, ranges, data, Path(cfg.cache_dir))
    base = accuracy(Candidate.uniform(layers, 32, 32))
    cands = random_candidates(layers, pairs, s.proxy_validation, s.seed)
    out = validate_proxies(cands, {**scores, **joints}, lambda c: 100.0 * (base - accuracy(c)))
    out["test_samples"] = n_test
    out["estimator_seconds"] = {name: round(r.seconds, 2) for name, r in results.items()}
    # joint proxies: wall time per candidate scored (None when every score came from the cache)
    out["joint_seconds_per_candidate"] = {
        name: None if p.mean_seconds() is None else round(p.mean_seconds(), 3) for name, p in joints.items()}
    return out, results


def _joint_proxy(cfg: RunConfig, name: str, prepared: PreparedModel, ranges: Mapping[str, tuple[float, float]],
                 calib: list[tuple[torch.Tensor, torch.Tensor]]) -> CandidateProxy:
    """The joint estimator ``name`` on the calibration data, cached per candidate in the cache folder."""
    est = make_joint_estimator(name, prepared.graph_module, prepared.layer_names, calib, ranges,
                               samples=cfg.search.sensitivity_samples, calib_samples=cfg.data.calib_samples)
    return CandidateProxy(est, Path(cfg.cache_dir))


def _check_failure_rate(todo: list[tuple[Any, ...]], measurements: list[Any], max_rate: float) -> None:
    """Failed measurements are values (reported as "not measured"), but past ``max_rate`` the run stops."""
    failed = [(t[0], m.error) for t, m in zip(todo, measurements) if not m.ok]
    if failed and len(failed) > max_rate * len(todo):
        label, error = failed[0]
        error = str(error).strip().splitlines()[0] if error else "no timing"
        raise HardwareError(f"{len(failed)} of {len(todo)} end-to-end measurements failed (e.g. {label}: {error}), "
                            f"more than search.max_failure_rate={max_rate:g}; the study and caches are kept, so "
                            "fix the device and re-run to resume")


def _learned_quantization(
    cfg: RunConfig, prepared: PreparedModel, ranges: Mapping[str, tuple[float, float]],
    calib: list[tuple[torch.Tensor, torch.Tensor]], test: list[tuple[torch.Tensor, torch.Tensor]],
    evaluated: list[EvaluatedCandidate], run_dir: Path,
) -> list[str]:
    """Learned PTQ (+ LSQ) and QAT-KD of the front candidates: ``accuracy`` becomes the learned model's,
    ``accuracy_rtn`` keeps round-to-nearest's; the learned patch goes to ``candidates/<label>.learned.pt``.
    Results are cached by content, so a re-run does not retrain."""
    s, cache_dir = cfg.search, Path(cfg.cache_dir)
    learners = make_learners(s.ptq, lsq=s.lsq, iters=s.ptq_iters, qat_epochs=s.qat_epochs, qat_lr=s.qat_lr,
                             seed=s.seed, lsq_weights=s.lsq_weights, fisher=s.brecq_fisher)
    (run_dir / "candidates").mkdir(exist_ok=True)
    lines = []
    for ev in evaluated:
        if (ev.kind == "baseline" and ev.label != "given") or all(b == (32, 32) for b in ev.candidate.values()):
            continue
        model, rngs, chain, steps = prepared, ranges, [], []
        for learner in learners:
            learned, _ = cached_learn(learner, model, ev.candidate, rngs, calib, cache_dir)
            model, rngs = learned.apply(model), learned.ranges
            chain.append(learned)
            acc = cached_accuracy(model, rngs, test, cache_dir)(ev.candidate)
            steps.append(f"{learner.describe()} {100 * acc:.2f}%")
        ev.accuracy_rtn, ev.accuracy = ev.accuracy, cached_accuracy(model, rngs, test, cache_dir)(ev.candidate)
        atomic_write_bytes(run_dir / "candidates" / f"{ev.label}.learned.pt", merge(prepared, chain).to_bytes())
        gain = 100 * (ev.accuracy - (ev.accuracy_rtn or 0.0))
        lines.append(f"{ev.label} ({ev.candidate.describe()}): top-1 round-to-nearest {100 * ev.accuracy_rtn:.2f}% → "
                     + " → ".join(steps) + f" ({gain:+.2f} pts).")
        log.info("learned quantization %s", lines[-1])
    if not lines:
        return []
    what = ", ".join(lr.describe() for lr in learners)
    n_calib = sum(len(y) for _, y in calib)
    grid = ("scale = max|w|/qmax, or a learned LSQ step ≤ it whose codes keep ±qmax" if s.lsq_weights
            else "scale = max|w|/qmax")
    return [f"Learned quantization ({what}) of the front candidates on the {n_calib} calibration images: "
            f"weights are snapped onto the kernels' own per-channel grid ({grid}) and LSQ steps map "
            "onto the activation ranges, so latency and weight memory are unchanged (the same compiled kernels, "
            "only weight and scale values differ) and the accuracy column is the learned model's; "
            "the patches are in candidates/<label>.learned.pt.", *lines]


def load_candidate(path: str, layers: list[str], groups: list[list[str]] = ()) -> Candidate:
    """Read a bit-config JSON and check it names exactly the model's layers with supported bits, one
    precision per layer group."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"candidate file {path!r} does not exist; give a JSON file {{layer: [w_bits, a_bits]}}")
    cand = Candidate.from_json(file.read_text()).validate(layers)
    check_candidate(cand, groups)
    return cand


def _first_samples(data: list[tuple[Any, torch.Tensor]], n: int) -> list[tuple[Any, torch.Tensor]]:
    """The first ``n`` samples of ``data`` as one batch in the pipeline's ``(inputs, label)`` convention."""
    s = first_samples(data, n)
    return [(s.inputs[0] if len(s.inputs) == 1 else s.inputs, s.labels)]


__all__ = ["AccuracyCache", "BASELINES", "RunOutcome", "build_model", "cached_accuracy", "evaluate_accuracy", "run"]
