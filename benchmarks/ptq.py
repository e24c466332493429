"""How much of round-to-nearest's accuracy loss do learned rounding and QAT-KD win back? (default model)

Two candidates of the default model (ResNet-20 on Fashion-MNIST): every layer at W4A8 (resp. W2A8)
except the stem convolution and the classifier, which stay W8A8 (the usual first/last-layer choice).
Each is quantized by round-to-nearest (RTN, what the search evaluates), AdaRound (learned rounding per
layer), BRECQ-style block reconstruction, and QAT with knowledge distillation from the FP32 model,
all learned on the calibration split; top-1 on the test split. Latency is the same for all rows of a
candidate: the learned weights lie on the same per-channel grid and run on the same compiled kernels.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import BenchmarkResult
from mpsearch.candidate import Candidate
from mpsearch.config import RunConfig
from mpsearch.pipeline import batches, build_model, cached_accuracy, load_data
from mpsearch.quant.calibration import calibrate
from mpsearch.quant.learned import Learner, cached_learn, off_grid_layers
from mpsearch.quant.prepare import prepare_model
from mpsearch.quant.qat import QatKd, QatSettings
from mpsearch.quant.reconstruct import Reconstruction, ReconstructionSettings

NAME = "ptq"
TITLE = "Learned PTQ and QAT-KD vs round-to-nearest at W4A8- and W2A8-dominated candidates, default model"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calib-samples", type=int, default=None, help="calibration images (default 2000; quick 128)")
    parser.add_argument("--test-samples", type=int, default=None, help="test images (default all 10000; quick 500)")
    parser.add_argument("--iters", type=int, default=None, help="AdaRound/BRECQ steps per unit (default 300; quick 10)")
    parser.add_argument("--qat-epochs", type=int, default=None, help="QAT-KD epochs (default 4; quick 1)")
    parser.add_argument("--seed", type=int, default=0)


def dominated(layers: list[str], w_bits: int) -> Candidate:
    """``w_bits``/8 everywhere except the first and last layer (W8A8)."""
    return Candidate({n: (8, 8) if n in (layers[0], layers[-1]) else (w_bits, 8) for n in layers})


def run(args: argparse.Namespace) -> BenchmarkResult:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    calib_n = args.calib_samples or (128 if args.quick else 2000)
    test_n = args.test_samples or (500 if args.quick else None)
    iters = args.iters or (10 if args.quick else 300)
    epochs = args.qat_epochs or (1 if args.quick else 4)
    cfg = RunConfig()
    model = build_model(cfg)
    calib = batches(load_data(cfg, "calib", calib_n), cfg.data.batch_size)
    test = batches(load_data(cfg, "test", test_n), cfg.data.batch_size)
    n_calib, n_test = sum(len(y) for _, y in calib), sum(len(y) for _, y in test)
    prepared = prepare_model(model, tuple(cfg.model.input_shape))
    layers = prepared.layer_names
    ranges = calibrate(prepared.graph_module, layers, calib, cfg.search.calibration, cfg.search.percentile)
    cache = Path(args.cache_dir)
    fp32 = cached_accuracy(prepared, ranges, test, cache)(Candidate.uniform(layers, 32, 32))
    methods: list[tuple[str, Learner | None]] = [
        ("RTN", None),
        ("AdaRound", Reconstruction("layer", ReconstructionSettings(iters=iters, seed=args.seed))),
        ("BRECQ", Reconstruction("block", ReconstructionSettings(iters=iters, seed=args.seed))),
        ("QAT-KD", QatKd(QatSettings(epochs=epochs, seed=args.seed))),
    ]
    rows: list[dict[str, Any]] = []
    for w_bits in (4, 2):
        cand = dominated(layers, w_bits)
        rtn = None
        for label, learner in methods:
            seconds = 0.0
            if learner is None:
                model_m, ranges_m = prepared, ranges
            else:
                learned, _ = cached_learn(learner, prepared, cand, ranges, calib, cache)
                if off_grid_layers(prepared, learned, cand):
                    raise AssertionError(f"{label} left weights off the kernels' grid")
                model_m, ranges_m = learned.apply(prepared), learned.ranges
                seconds = float(learned.stats.get("seconds", 0.0))
            acc = cached_accuracy(model_m, ranges_m, test, cache)(cand)
            rtn = acc if rtn is None else rtn
            lost = fp32 - rtn
            share = None if learner is None or lost <= 0 else (acc - rtn) / lost
            rows.append({"candidate": f"W{w_bits}A8-dominated", "method": label, "top1": acc,
                         "gain_pts": 100 * (acc - rtn), "recovered_share": share, "learn_seconds": seconds})
            log.info("W%dA8-dominated %-8s top-1 %.4f (%.1f s)", w_bits, label, acc, seconds)
    lines = [
        f"Default model, FP32 top-1 {100 * fp32:.2f}% on {n_test} test images. Candidates: every layer W4A8 "
        f"(resp. W2A8) except the stem and the classifier (W8A8). Learned on {n_calib} calibration images "
        f"({iters} steps per layer/block for AdaRound and BRECQ, {epochs} epochs of QAT-KD); same kernels and "
        "latency for every row of a candidate (weights snapped onto the kernels' grid).",
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
