"""Does each sensitivity proxy rank candidates like their real accuracy drop? (default model, one run)

Draws random candidates of the default model (ResNet-20 on Fashion-MNIST, the default search space),
measures each one's top-1 drop from FP32 on the test split (the fake-quant simulation of the kernels'
arithmetic), and reports the Spearman rank correlation of every estimator's additive proxy with that
drop, plus each estimator's wall time, all in one run. A control proxy with every curvature set to 1
(quantization error alone) shows what the sensitivity signal adds.
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
from mpsearch.quant.calibration import calibrate
from mpsearch.quant.prepare import prepare_model
from mpsearch.search import bit_pairs
from mpsearch.sensitivity import (
    ESTIMATORS, DeltaLossEstimator, EigenvalueEstimator, FisherEstimator, HutchinsonEstimator, LayerSensitivity,
    SensitivityEstimator, SensitivityResult, cached_estimate, make_estimator, random_candidates, score_table,
    validate_proxies,
)

NAME = "proxy_validation"
TITLE = "Sensitivity proxies vs measured accuracy drop (Spearman), default model"
CONTROL = "error_only"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--candidates", type=int, default=None, help="random candidates (default 40; quick 6)")
    parser.add_argument("--test-samples", type=int, default=None,
                        help="test images for the accuracy drop (default: the whole split; quick 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-sensitivity", action="store_true",
                        help="take estimates from the sensitivity cache (their recorded wall time is from the "
                             "run that computed them); default: compute each afresh so the times are this run's")


def run(args: argparse.Namespace) -> BenchmarkResult:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    n_cands = args.candidates or (6 if args.quick else 40)
    test_samples = args.test_samples or (500 if args.quick else None)
    cfg = RunConfig()
    s = cfg.search
    model = build_model(cfg)
    calib = batches(load_data(cfg, "calib", cfg.data.calib_samples), cfg.data.batch_size)
    test = batches(load_data(cfg, "test", test_samples), cfg.data.batch_size)
    n_test = sum(len(y) for _, y in test)
    prepared = prepare_model(model, tuple(cfg.model.input_shape))
    gm, layers = prepared.graph_module, prepared.layer_names
    ranges = calibrate(gm, layers, calib, s.calibration, s.percentile, s.calibration_bits)
    pairs = bit_pairs(s.w_bits, s.a_bits, s.weight_only)
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
    ones = {n: LayerSensitivity(n, 1.0, 1.0, r.weight_numel, r.act_numel)
            for n, r in results["hutchinson"].layers.items()}
    scores[CONTROL] = score_table(gm, SensitivityResult(CONTROL, ones), ranges, pairs, sens_batches)

    accuracy = cached_accuracy(prepared, ranges, test, Path(args.cache_dir))
    fp32 = accuracy(Candidate.uniform(layers, 32, 32))
    cands = random_candidates(layers, pairs, n_cands, args.seed)
    done = [0]

    def drop(c: Candidate) -> float:
        done[0] += 1
        log.info("candidate %d/%d: %s", done[0], len(cands), c.describe())
        return 100.0 * (fp32 - accuracy(c))

    val = validate_proxies(cands, scores, drop)
    drops = sorted(p["acc_drop_pts"] for p in val["points"])
    rows = []
    for name in [*ESTIMATORS, CONTROL]:
        rho = val["spearman"][name]
        r = results.get(name)
        rows.append({"estimator": name, "spearman": rho, "seconds": None if r is None else round(r.seconds, 2),
                     "cpu_seconds": cpu.get(name), "iterations": None if r is None else r.iterations,
                     "settings": None if r is None else _settings(args, name, s.sensitivity_samples, ranges, pairs)})
    best = max((r for r in rows if r["spearman"] is not None and r["estimator"] != CONTROL),
               key=lambda r: r["spearman"], default=None)
    data = {"n": val["n"], "test_samples": n_test, "fp32_accuracy": fp32, "pairs": [list(p) for p in pairs],
            "sensitivity_samples": s.sensitivity_samples, "rows": rows, "best": best and best["estimator"],
            "acc_drop_range_pts": [drops[0], drops[-1]] if drops else None, "points": val["points"]}
    lines = [
        f"{val['n']} random candidates of the default model (each with its own random mix of the pairs "
        f"{', '.join(f'W{w}A{a}' for w, a in pairs)}), top-1 drop from FP32 ({100 * fp32:.2f}%) measured on "
        f"{n_test} test images: drops from {drops[0]:.2f} to {drops[-1]:.2f} points. Proxy = sum over layers "
        "of each estimator's score (the score the search uses), estimated on the first calibration images.",
        "",
        "| estimator | Spearman ρ (proxy, accuracy drop) | wall time (s) | CPU time (s) | iterations | settings |",
        "|:---|---:|---:|---:|---:|:---|",
    ]
    for r in rows:
        rho = "n/a" if r["spearman"] is None else f"{r['spearman']:.3f}"
        sec = "—" if r["seconds"] is None else f"{r['seconds']:.1f}"
        cpu_s = "—" if r["cpu_seconds"] is None else f"{r['cpu_seconds']:.1f}"
        it = "—" if r["iterations"] is None else str(r["iterations"])
        label = r["estimator"] + (" (control: all curvatures 1)" if r["estimator"] == CONTROL else "")
        settings = ", ".join(f"{k}={v}" for k, v in (r["settings"] or {}).items() if k != "pairs")
        lines.append(f"| {label} | {rho} | {sec} | {cpu_s} | {it} | {settings} |")
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
    }


def _settings(args: argparse.Namespace, name: str, samples: int, ranges: Any, pairs: Any) -> dict[str, Any]:
    key = _estimators(args, samples, ranges, pairs)[name].config_key()
    key.pop("ranges", None)
    return key
