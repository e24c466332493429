"""Does each sensitivity proxy rank candidates like their real accuracy drop? (default model, one run)

Draws random candidates of the default model (ResNet-20 on Fashion-MNIST, the default search space),
measures each one's top-1 drop from FP32 on the test split (the fake-quant simulation of the kernels'
arithmetic), and reports the Spearman rank correlation of every estimator's additive proxy with that
drop, plus each estimator's wall time, all in one run. A control proxy with every curvature set to 1
(quantization error alone) shows what the sensitivity signal adds. Beside the additive (per-layer)
estimators, the joint ones score each whole candidate (``second_order``: gᵀΔ + ½ΔᵀHΔ of the whole
perturbation; ``calib_kl``: the fake-quant model's measured divergence from FP32 on calibration images);
their wall time is per candidate.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import BenchmarkResult
from mpsearch.candidate import Candidate
from mpsearch.config import RunConfig
from mpsearch.pipeline import batches, build_model, cached_accuracy, load_data
from mpsearch.quant.calibration import calibrate_for
from mpsearch.quant.prepare import prepare_model
from mpsearch.search import activation_bits, bit_pairs
from mpsearch.sensitivity import (
    ESTIMATORS, JOINT_ESTIMATORS, CalibKLEstimator, CandidateProxy, DeltaLossEstimator, EigenvalueEstimator,
    FisherEstimator, HutchinsonEstimator, LayerSensitivity, SecondOrderEstimator,
    SensitivityEstimator, SensitivityResult, cached_estimate, make_estimator, make_joint_estimator,
    random_candidates, score_table, spearman, validate_proxies,
)

NAME = "proxy_validation"
TITLE = "Sensitivity proxies vs measured accuracy drop (Spearman), default model"
CONTROL = "error_only"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--candidates", type=int, default=None, help="random candidates (default 40; quick 6)")
    parser.add_argument("--test-samples", type=int, default=None,
                        help="test images for the accuracy drop (default: the whole split; quick 500)")
    parser.add_argument("--layer-candidates", type=int, default=None,
                        help="extra candidates drawn uniformly per layer, as Optuna's random sampler does "
                             "(default 20; quick 3; 0: none): a narrower range of drops, reported apart")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-sensitivity", action="store_true",
                        help="take estimates from the sensitivity cache (their recorded wall time is from the "
                             "run that computed them); default: compute each afresh so the times are this run's")


def run(args: argparse.Namespace) -> BenchmarkResult:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    n_cands = args.candidates or (6 if args.quick else 40)
    n_layer = args.layer_candidates if args.layer_candidates is not None else (3 if args.quick else 20)
    test_samples = args.test_samples or (500 if args.quick else None)
    cfg = RunConfig()
    s = cfg.search
    model = build_model(cfg)
    calib = batches(load_data(cfg, "calib", cfg.data.calib_samples), cfg.data.batch_size)
    test = batches(load_data(cfg, "test", test_samples), cfg.data.batch_size)
    n_test = sum(len(y) for _, y in test)
    prepared = prepare_model(model, tuple(cfg.model.input_shape))
    gm, layers = prepared.graph_module, prepared.layer_names
    ranges = calibrate_for(gm, layers, calib, s)
    pairs = bit_pairs(s.w_bits, activation_bits(s.a_bits), s.weight_only)
    x = torch.cat([b[0] for b in calib])[:s.sensitivity_samples]
    y = torch.cat([b[1] for b in calib])[:s.sensitivity_samples]
    sens_batches = [(x, y)]

    results: dict[str, SensitivityResult] = {}
    cpu: dict[str, float] = {}
    scores: dict[str, Any] = {}
    for name, est in _estimators(args, s.sensitivity_samples, ranges, pairs).items():
        start, cpu_start = time.perf_counter(), time.process_time()
        if args.reuse_sensitivity:
            results[name] = cached_estimate(est, gm, layers, sens_batches, Path(args.cache_dir))
        else:
            results[name] = est.estimate(gm, layers, sens_batches)
        cpu[name] = round(time.process_time() - cpu_start, 2)
        log.info("%s: %.1f s wall, %.1f s CPU", name, time.perf_counter() - start, cpu[name])
        scores[name] = score_table(gm, results[name], ranges, pairs, sens_batches)
    # every calibration image shipped (2000): the run's joint proxies take the first calib_samples of them,
    # calib_kl@all measures on all of them (how the measured proxy scales with its sample)
    joint_calib = batches(load_data(cfg, "calib", None), cfg.data.batch_size)
    joints: dict[str, CandidateProxy] = {}
    joint_setup: dict[str, float] = {}
    for name, make in _joint_estimators(args, cfg).items():
        start = time.perf_counter()
        est = make(gm, layers, joint_calib, ranges)
        joint_setup[name] = time.perf_counter() - start
        # cached per candidate only with --reuse-sensitivity, so that the times are this run's
        joints[name] = CandidateProxy(est, Path(args.cache_dir) if args.reuse_sensitivity else None)
    ones = {n: LayerSensitivity(n, 1.0, 1.0, r.weight_numel, r.act_numel)
            for n, r in results["hutchinson"].layers.items()}
    scores[CONTROL] = score_table(gm, SensitivityResult(CONTROL, ones), ranges, pairs, sens_batches)

    accuracy = cached_accuracy(prepared, ranges, test, Path(args.cache_dir))
    fp32 = accuracy(Candidate.uniform(layers, 32, 32))
    # The main set: each candidate its own random mix of the pairs (seed as in every earlier run, so the
    # figures stay comparable); the second set: every layer uniform over the pairs.
    cands = random_candidates(layers, pairs, n_cands, args.seed)
    layer_cands = [c for c in random_candidates(layers, pairs, n_layer, args.seed + 1, sampling="layer")
                   if c not in set(cands)] if n_layer else []
    done = [0]

    def drop(c: Candidate) -> float:
        done[0] += 1
        log.info("candidate %d/%d: %s", done[0], len(cands) + len(layer_cands), c.describe())
        return 100.0 * (fp32 - accuracy(c))

    proxies = {**scores, **joints}
    val = validate_proxies(cands, proxies, drop)
    val_layer = validate_proxies(layer_cands, proxies, drop) if layer_cands else None
    pooled = val["points"] + (val_layer["points"] if val_layer else [])
    drops = sorted(p["acc_drop_pts"] for p in val["points"])
    layer_drops = sorted(p["acc_drop_pts"] for p in val_layer["points"]) if val_layer else []

    def extra(name: str) -> dict[str, Any]:
        return {"spearman_layer_uniform": val_layer["spearman"][name] if val_layer else None,
                "spearman_pooled": spearman([p[name] for p in pooled], [p["acc_drop_pts"] for p in pooled])}

    rows = []
    for name in [*ESTIMATORS, CONTROL]:
        rho = val["spearman"][name]
        r = results.get(name)
        rows.append({"estimator": name, "kind": "additive", "spearman": rho, **extra(name),
                     "seconds": None if r is None else round(r.seconds, 2),
                     "cpu_seconds": cpu.get(name), "iterations": None if r is None else r.iterations,
                     "settings": None if r is None else _settings(args, name, s.sensitivity_samples, ranges, pairs)})
    for name, proxy in joints.items():
        per = proxy.mean_seconds()
        rows.append({"estimator": name, "kind": "joint", "spearman": val["spearman"][name], **extra(name),
                     "seconds": round(proxy.seconds + joint_setup[name], 2), "cpu_seconds": None,
                     "seconds_per_candidate": None if per is None else round(per, 3),
                     "setup_seconds": round(joint_setup[name], 2), "iterations": proxy.computed,
                     "settings": proxy.estimator.config_key()})
    best = max((r for r in rows if r["spearman"] is not None and r["estimator"] != CONTROL),
               key=lambda r: r["spearman"], default=None)
    data = {"n": val["n"], "test_samples": n_test, "fp32_accuracy": fp32, "pairs": [list(p) for p in pairs],
            "sensitivity_samples": s.sensitivity_samples, "rows": rows, "best": best and best["estimator"],
            "acc_drop_range_pts": [drops[0], drops[-1]] if drops else None, "points": val["points"],
            "layer_uniform": None if val_layer is None else {
                "n": val_layer["n"], "acc_drop_range_pts": [layer_drops[0], layer_drops[-1]],
                "points": val_layer["points"]}}
    lines = [
        f"{val['n']} random candidates of the default model (each with its own random mix of the pairs "
        f"{', '.join(f'W{w}A{a}' for w, a in pairs)}), top-1 drop from FP32 ({100 * fp32:.2f}%) measured on "
        f"{n_test} test images: drops from {drops[0]:.2f} to {drops[-1]:.2f} points. Proxy = sum over layers "
        "of each estimator's score (the score the search uses), estimated on the first calibration images.",
    ]
    if val_layer is not None:
        lines += ["", f"Second set: {val_layer['n']} candidates with every layer drawn uniformly from the pairs "
                  f"(as Optuna's random sampler and NSGA-II's first generation draw them): drops from "
                  f"{layer_drops[0]:.2f} to {layer_drops[-1]:.2f} points, a narrower range, so harder to rank "
                  "against the measurement noise of the drop; ρ on it and on both sets pooled are in the last "
                  "columns."]
    lines += [
        "",
        "| estimator | Spearman ρ (proxy, accuracy drop) | wall time (s) | CPU time (s) | iterations | settings "
        "| ρ layer-uniform | ρ pooled |",
        "|:---|---:|---:|---:|---:|:---|---:|---:|",
    ]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    joint_lines = []
    for r in rows:
        rho = "n/a" if r["spearman"] is None else f"{r['spearman']:.3f}"
        sec = "—" if r["seconds"] is None else f"{r['seconds']:.1f}"
        cpu_s = "—" if r["cpu_seconds"] is None else f"{r['cpu_seconds']:.1f}"
        it = "—" if r["iterations"] is None else str(r["iterations"])
        label = r["estimator"] + (" (control: all curvatures 1)" if r["estimator"] == CONTROL else "")
        settings = ", ".join(f"{k}={v}" for k, v in (r["settings"] or {}).items() if k != "pairs")
        more = f"{fmt(r['spearman_layer_uniform'])} | {fmt(r['spearman_pooled'])}"
        if r["kind"] == "joint":
            per = "—" if r["seconds_per_candidate"] is None else f"{r['seconds_per_candidate']:.2f}"
            joint_lines.append(f"| {label} | {rho} | {per} | {sec} | {it} | {settings} | {more} |")
            continue
        lines.append(f"| {label} | {rho} | {sec} | {cpu_s} | {it} | {settings} | {more} |")
    if joint_lines:
        lines += ["", "Joint (whole-candidate) proxies, not additive, so not usable by the ILP; the search can "
                  "minimise them (`search.sensitivity=second_order|calib_kl`):", "",
                  "| estimator | Spearman ρ (proxy, accuracy drop) | wall time per candidate (s) | total wall "
                  "time incl. setup (s) | candidates scored | settings | ρ layer-uniform | ρ pooled |",
                  "|:---|---:|---:|---:|---:|:---|---:|---:|",
                  *joint_lines]
    which = "tiny --quick budgets" if args.quick else "those a default run uses"
    lines += ["", f"Wall time is the estimator's own ({args.threads} threads; the settings are {which}); CPU time "
              "sums all threads. Hessian traces (hutchinson) must stay within 30 s on 2 cores."]
    if best is not None:
        verdict = "meets" if best["spearman"] >= 0.9 else "misses"
        lines += ["", f"Best: {best['estimator']} (ρ = {best['spearman']:.3f}), which {verdict} the 0.9 target."]
    if args.quick:
        lines += ["", "(--quick: few candidates on a test subset; not a result.)"]
    return BenchmarkResult(NAME, TITLE, data, "\n".join(lines))


def _estimators(args: argparse.Namespace, samples: int, ranges: Any, pairs: Any) -> dict[str, SensitivityEstimator]:
    """The run's estimators (``make_estimator``, default settings); tiny budgets under --quick."""
    if not args.quick:
        return {name: make_estimator(name, samples=samples, seed=args.seed, ranges=ranges, pairs=pairs)
                for name in ESTIMATORS}
    return {
        "hutchinson": HutchinsonEstimator(max_iters=1, min_iters=1, batch_size=32, seed=args.seed),
        "eigenvalue": EigenvalueEstimator(max_iters=2, batch_size=8, seed=args.seed),
        "fisher": FisherEstimator(batch_size=32),
        "delta_loss": DeltaLossEstimator(ranges, pairs, batch_size=32),
        "delta_kl": DeltaLossEstimator(ranges, pairs, batch_size=32, metric="kl"),
    }


def _settings(args: argparse.Namespace, name: str, samples: int, ranges: Any, pairs: Any) -> dict[str, Any]:
    key = _estimators(args, samples, ranges, pairs)[name].config_key()
    key.pop("ranges", None)
    return key


def _joint_estimators(args: argparse.Namespace, cfg: RunConfig) -> dict[str, Any]:
    """Builders of the joint estimators (as a run makes them); tiny budgets under --quick."""
    s = cfg.search
    if not args.quick:
        out = {name: (lambda gm, layers, data, ranges, name=name: make_joint_estimator(
            name, gm, layers, data, ranges, samples=s.sensitivity_samples, calib_samples=cfg.data.calib_samples))
            for name in JOINT_ESTIMATORS}
        out["calib_kl@all"] = lambda gm, layers, data, ranges: CalibKLEstimator(
            gm, layers, data, ranges, batch_size=sum(len(b[1]) for b in data))
        return out
    return {
        "second_order": lambda gm, layers, data, ranges: SecondOrderEstimator(gm, layers, data, ranges, batch_size=32),
        "calib_kl": lambda gm, layers, data, ranges: CalibKLEstimator(gm, layers, data, ranges, batch_size=128),
        "calib_kl@all": lambda gm, layers, data, ranges: CalibKLEstimator(gm, layers, data, ranges, batch_size=512),
    }
