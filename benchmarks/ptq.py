"""How much of round-to-nearest's accuracy loss do learned rounding, learned steps and QAT-KD win back? (default model)

Two candidates of the default model (ResNet-20 on Fashion-MNIST), the stem convolution and the
classifier at W8A8 (the usual first/last-layer choice) and every other layer at

* W4A8 (the "W4A8-dominated" candidate), resp.
* W2A4 in the last stage and W4A4 elsewhere (the "≤4-bit-heavy" candidate: low-bit activations too,
  where learned activation steps matter).

Each is quantized by round-to-nearest (RTN, what the search evaluates) and by each learner, all learned
on the calibration split only (Fisher gradients included); top-1 on the test split:

* AdaRound: learned rounding per layer;
* BRECQ: learned rounding per residual block, plain output MSE; + Fisher: the block error weighted by
  the FP32 model's squared loss gradients;
* then, cumulatively on BRECQ + Fisher: + LSQ(act) (learned activation steps), + LSQ(weight) (learned
  per-channel weight steps, joint with the rounding), + QAT-KD (QAT with distillation from the FP32
  model, started from the previous row's model); QAT-KD alone from RTN for reference.

Latency is the same for every row of a candidate: the learned weights are ``step · codes`` with codes
in the same bit-width, and the compiled kernels take the per-channel step as a runtime array.
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
from mpsearch.quant.learned import Learner, cached_learn, off_grid_layers
from mpsearch.quant.prepare import PreparedModel, prepare_model
from mpsearch.quant.qat import QatKd, QatSettings
from mpsearch.quant.reconstruct import Reconstruction, ReconstructionSettings

NAME = "ptq"
TITLE = ("Learned PTQ (AdaRound, BRECQ ± Fisher, LSQ act/weight) and QAT-KD vs round-to-nearest at a "
         "W4A8-dominated and a ≤4-bit-heavy candidate, default model")

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calib-samples", type=int, default=None, help="calibration images (default 1024; quick 128)")
    parser.add_argument("--test-samples", type=int, default=None, help="test images (default all 10000; quick 500)")
    parser.add_argument("--iters", type=int, default=None,
                        help="AdaRound/BRECQ steps per layer/block (default 100; quick 10)")
    parser.add_argument("--qat-epochs", type=int, default=None, help="QAT-KD epochs (default 3; quick 1)")
    parser.add_argument("--candidates", default="w4a8,low", help="comma-separated: w4a8 (W4A8-dominated), "
                        "low (≤4-bit-heavy: W4A4, W2A4 in the last stage)")
    parser.add_argument("--seed", type=int, default=0)


def dominated(layers: list[str], w_bits: int, a_bits: int = 8) -> Candidate:
    """``w_bits``/``a_bits`` everywhere except the first and last layer (W8A8)."""
    return Candidate({n: (8, 8) if n in (layers[0], layers[-1]) else (w_bits, a_bits) for n in layers})


def low_bit_heavy(layers: list[str]) -> Candidate:
    """W4A4 inside, W2A4 in the last stage (``layer3.*``), W8A8 stem and classifier."""
    inner = {n: (2, 4) if n.startswith("layer3.") else (4, 4) for n in layers[1:-1]}
    return Candidate({layers[0]: (8, 8), **inner, layers[-1]: (8, 8)})


CANDIDATES = {"w4a8": ("W4A8-dominated", lambda layers: dominated(layers, 4, 8)),
              "low": ("≤4-bit-heavy (W4A4, W2A4 last stage)", low_bit_heavy)}


def methods(iters: int, epochs: int, seed: int) -> list[tuple[str, list[Learner]]]:
    """(row label, learners applied in turn); an empty chain is round-to-nearest."""
    def rec(granularity: str, **kw: Any) -> Reconstruction:
        return Reconstruction(granularity, ReconstructionSettings(iters=iters, seed=seed, **kw))

    best = rec("block", fisher=True, lsq=True, lsq_weights=True)
    return [
        ("RTN", []),
        ("AdaRound", [rec("layer")]),
        ("BRECQ", [rec("block")]),
        ("BRECQ + Fisher", [rec("block", fisher=True)]),
        ("BRECQ + Fisher + LSQ(act)", [rec("block", fisher=True, lsq=True)]),
        ("BRECQ + Fisher + LSQ(act) + LSQ(weight)", [best]),
        ("BRECQ + Fisher + LSQ(act) + LSQ(weight) + QAT-KD", [best, QatKd(QatSettings(epochs=epochs, seed=seed))]),
        ("QAT-KD alone (from RTN)", [QatKd(QatSettings(epochs=epochs, seed=seed))]),
    ]


def evaluate(prepared: PreparedModel, ranges: dict, cand: Candidate, chain: list[Learner], calib: list,
             test: list, cache: Path) -> tuple[float, float]:
    """(test top-1, learning seconds) of ``cand`` after the learners in ``chain`` (cached by content)."""
    model, rngs, seconds = prepared, ranges, 0.0
    for learner in chain:
        start = time.perf_counter()
        learned, _ = cached_learn(learner, model, cand, rngs, calib, cache)
        if off_grid_layers(model, learned, cand):
            raise AssertionError(f"{learner.describe()} left weights off the kernels' grid")
        model, rngs = learned.apply(model), learned.ranges
        # the learner's own time when it ran now or was cached (stats carry it); else the cache read's
        seconds += float(learned.stats.get("seconds", time.perf_counter() - start))
    return cached_accuracy(model, rngs, test, cache)(cand), seconds


def run(args: argparse.Namespace) -> BenchmarkResult:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    calib_n = args.calib_samples or (128 if args.quick else 1024)
    test_n = args.test_samples or (500 if args.quick else None)
    iters = args.iters or (10 if args.quick else 100)
    epochs = args.qat_epochs or (1 if args.quick else 3)
    cfg = RunConfig()
    model = build_model(cfg)
    calib = batches(load_data(cfg, "calib", calib_n), cfg.data.batch_size)
    test = batches(load_data(cfg, "test", test_n), cfg.data.batch_size)
    n_calib, n_test = sum(len(y) for _, y in calib), sum(len(y) for _, y in test)
    prepared = prepare_model(model, tuple(cfg.model.input_shape))
    layers = prepared.layer_names
    ranges = calibrate_for(prepared.graph_module, layers, calib, cfg.search)
    cache = Path(args.cache_dir)
    fp32 = cached_accuracy(prepared, ranges, test, cache)(Candidate.uniform(layers, 32, 32))
    rows: list[dict[str, Any]] = []
    for key in [k.strip() for k in args.candidates.split(",") if k.strip()]:
        if key not in CANDIDATES:
            raise SystemExit(f"ptq: unknown candidate {key!r}; use {', '.join(CANDIDATES)}")
        title, make = CANDIDATES[key]
        cand = make(layers)
        rtn = None
        for label, chain in methods(iters, epochs, args.seed):
            acc, seconds = evaluate(prepared, ranges, cand, chain, calib, test, cache)
            rtn = acc if rtn is None else rtn
            lost = fp32 - rtn
            share = None if not chain or lost <= 0 else (acc - rtn) / lost
            rows.append({"candidate": title, "bits": cand.describe(), "method": label, "top1": acc,
                         "gain_pts": 100 * (acc - rtn), "recovered_share": share, "learn_seconds": round(seconds, 1)})
            log.info("%s %-45s top-1 %.4f (%.1f s)", title, label, acc, seconds)
    lines = [
        f"Default model, FP32 top-1 {100 * fp32:.2f}% on {n_test} test images. Stem and classifier W8A8; "
        "*W4A8-dominated*: every other layer W4A8; *≤4-bit-heavy*: W4A4, with W2A4 in the last stage. "
        f"Everything learned on the first {n_calib} calibration images only (Fisher gradients included): "
        f"{iters} steps per layer/block for AdaRound and BRECQ, {epochs} epochs of QAT-KD. Same kernels and "
        "latency for every row of a candidate (learned weights are step · codes at the same bit-width). "
        "*Share recovered* is (learned − RTN) / (FP32 − RTN); *time* is the learning wall time "
        "(chains: summed).",
        "",
        "| candidate | method | top-1 | vs RTN (pts) | share of RTN's loss recovered | learning time (s) |",
        "|:---|:---|---:|---:|---:|---:|",
    ]
    for r in rows:
        share = "—" if r["recovered_share"] is None else f"{100 * r['recovered_share']:.0f}%"
        gain = "—" if r["method"] == "RTN" else f"{r['gain_pts']:+.2f}"
        lines.append(f"| {r['candidate']} | {r['method']} | {100 * r['top1']:.2f}% | {gain} | {share} | "
                     f"{r['learn_seconds']:.0f} |")
    if args.quick:
        lines += ["", "(--quick: few steps on small splits; not a result.)"]
    data = {"fp32_top1": fp32, "calib_samples": n_calib, "test_samples": n_test, "iters": iters,
            "qat_epochs": epochs, "threads": torch.get_num_threads(), "rows": rows}
    return BenchmarkResult(NAME, TITLE, data, "\n".join(lines))
