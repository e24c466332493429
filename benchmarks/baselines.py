"""Speedup at iso-accuracy and what users would pick instead, one run, one machine, pinned threads.

Rows: PyTorch FP32 eager; ONNX Runtime FP32 and ONNX Runtime INT8 (static QDQ quantization, per-channel
weights, min-max calibration on the same calibration images); TVM FP32 and uniform INT8 (tuned, the
same kernels mpsearch uses); mpsearch's pick: the fastest measured candidate of the default search's
front within 1 point of FP32 accuracy. All latencies are batch 1, median of repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import BenchmarkResult, median_time_s
from mpsearch.report.markdown import markdown_table

NAME = "baselines"
TITLE = "Speedup at iso-accuracy, and mpsearch beside PyTorch and ONNX Runtime (default model, host CPU)"
ISO_POINTS = 1.0  # accuracy points within FP32 that count as iso-accuracy
TRIALS = 32  # per kernel, for all TVM rows alike (the host profile's default, 8, is for a quick first run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3, help="rounds of framework timings (median taken)")
    parser.add_argument("--trials", type=int, default=TRIALS,
                        help="MetaSchedule trials per kernel for every TVM row (the pick's search, FP32, INT8)")


def _accuracy(predict, data) -> float:
    correct = total = 0
    for x, y in data:
        correct += int((predict(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total


def _onnx_models(model: torch.nn.Module, calib: list, workdir: Path, threads: int) -> dict[str, Path]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = workdir / "model.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(fp32), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17)
    pre = workdir / "model.pre.onnx"
    quant_pre_process(str(fp32), str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": x.numpy()} for x, _ in calib])

        def get_next(self):  # noqa: ANN201 - ORT's interface
            return next(self.it, None)

    int8 = workdir / "model.int8.onnx"
    quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return {"ort_fp32": fp32, "ort_int8": int8}


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run(args: argparse.Namespace) -> BenchmarkResult:
    from mpsearch.config import RunConfig
    from mpsearch.hardware.tvm_backend import TVMBackend
    from mpsearch.pipeline import build_model, configured_profile, run as run_search

    work = Path(tempfile.mkdtemp(prefix="mpsearch-bench-"))
    cfg = RunConfig(results_dir=str(work / "results"), cache_dir=str(args.cache_dir), progress=False)
    cfg.hw_profile.threads = args.threads
    cfg.hw_profile.trials_per_task = args.trials
    if args.quick:
        cfg.data.test_samples, cfg.search.n_trials, cfg.search.measure_front = 1000, 60, 3
    outcome = run_search(cfg)  # the default search (tuning records and caches reused)
    evs = {e.label: e for e in outcome.summary.candidates}
    fp32_acc = evs["fp32"].accuracy

    # Time every TVM candidate anew, interleaved, so all TVM rows share one machine state.
    backend = TVMBackend(configured_profile(cfg), Path(args.cache_dir), progress=False)
    backend.record_timings_in(work / "costs.jsonl")
    from mpsearch.pipeline import batches, load_data
    from mpsearch.quant.calibration import calibrate
    from mpsearch.quant.prepare import prepare_model

    model = build_model(cfg)
    prepared = prepare_model(model, tuple(cfg.model.input_shape))
    calib = batches(load_data(cfg, "calib", cfg.data.calib_samples), cfg.data.batch_size)
    test = batches(load_data(cfg, "test", cfg.data.test_samples), cfg.data.batch_size)
    ranges = calibrate(prepared.graph_module, prepared.layer_names, calib, cfg.search.calibration,
                       cfg.search.percentile)
    tvm_labels = [label for label, e in evs.items() if e.kind in ("pareto", "ilp") or label in ("fp32", "int8")]
    meas = backend.measure_many(prepared, [evs[label].candidate for label in tvm_labels], ranges)
    tvm_ms = {label: m.latency_s * 1e3 for label, m in zip(tvm_labels, meas) if m.ok}
    iso = [label for label in tvm_labels if label in tvm_ms and evs[label].kind != "baseline"
           and evs[label].accuracy >= fp32_acc - ISO_POINTS / 100]
    pick = min(iso, key=tvm_ms.get) if iso else None

    # Frameworks users would reach for instead, same threads, same batch-1 input.
    x1 = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype("float32"))
    onnx = _onnx_models(model, [(x, y) for x, y in calib][:4], work, args.threads)
    sessions = {name: _ort_session(path, args.threads) for name, path in onnx.items()}
    frameworks = {
        "pytorch_fp32": lambda: model(x1),
        **{name: (lambda s=s: s.run(None, {"x": x1.numpy()})) for name, s in sessions.items()},
    }
    samples: dict[str, list[float]] = {name: [] for name in frameworks}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, fn in frameworks.items():
                samples[name].append(median_time_s(fn, repeat=5, number=20)[0] * 1e3)
        accuracy = {"pytorch_fp32": _accuracy(model, test)}
    for name, s in sessions.items():
        accuracy[name] = _accuracy(lambda x, s=s: torch.from_numpy(s.run(None, {"x": x.numpy()})[0]), test)

    rows = [
        ("PyTorch FP32 (eager)", accuracy["pytorch_fp32"], statistics.median(samples["pytorch_fp32"]), None),
        ("ONNX Runtime FP32", accuracy["ort_fp32"], statistics.median(samples["ort_fp32"]), None),
        ("ONNX Runtime INT8 (static QDQ, per-channel)", accuracy["ort_int8"], statistics.median(samples["ort_int8"]),
         None),
        ("TVM FP32 (tuned)", evs["fp32"].accuracy, tvm_ms.get("fp32"), evs["fp32"].weight_bytes),
        ("TVM INT8 uniform (tuned)", evs["int8"].accuracy, tvm_ms.get("int8"), evs["int8"].weight_bytes),
    ]
    if pick:
        rows.append((f"mpsearch pick ({pick}: {evs[pick].candidate.describe()})", evs[pick].accuracy, tvm_ms[pick],
                     evs[pick].weight_bytes))
    ref = statistics.median(samples["pytorch_fp32"])
    faster_uniform = min(v for v in (tvm_ms.get("fp32"), tvm_ms.get("int8")) if v is not None)
    table = markdown_table(
        ["method", "top-1 %", "latency ms", "× vs PyTorch FP32", "× vs faster TVM uniform", "weight KiB"],
        [[name, f"{acc * 100:.2f}", f"{ms:.3f}" if ms else "n/a", f"{ref / ms:.2f}" if ms else "",
          f"{faster_uniform / ms:.2f}" if ms else "", f"{wb / 1024:.1f}" if wb else ""]
         for name, acc, ms, wb in rows])
    speedup = faster_uniform / tvm_ms[pick] if pick else None
    data = {
        "fp32_accuracy": fp32_acc, "iso_points": ISO_POINTS, "pick": pick,
        "pick_candidate": evs[pick].candidate.to_json() if pick else None,
        "speedup_vs_faster_uniform": speedup, "target_speedup": 1.3,
        "rows": [{"method": n, "accuracy": a, "latency_ms": ms, "weight_bytes": wb} for n, a, ms, wb in rows],
        "tvm_candidates_ms": tvm_ms, "framework_samples_ms": samples, "test_images": sum(len(y) for _, y in test),
        "device": backend.describe(), "trials_per_kernel": args.trials,
    }
    verdict = (f"Speedup of the pick over the faster tuned uniform baseline: **{speedup:.2f}×** (target ≥ 1.3×)."
               if speedup else "No front candidate came within 1 point of FP32 accuracy.")
    text = "\n".join([
        f"Top-1 on {data['test_images']} Fashion-MNIST test images; latency batch 1 on {data['device']}. "
        f"Every TVM kernel tuned with MetaSchedule ({backend.profile.tuning.strategy}, {args.trials} trials). "
        f"Iso-accuracy: within {ISO_POINTS:g} point of FP32.", "", table, "", verdict, ""])
    return BenchmarkResult(NAME, TITLE, data, text)
