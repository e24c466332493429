"""Layer by layer: where the compiled library spends its time, beside ONNX Runtime's kernels for the same
layers, on this host (pinned threads).

For each model, uniform FP32 and uniform INT8 are compiled as the search compiles them (every kernel
tuned with MetaSchedule at ``--trials``) and run by the Relax VM with an instrument that times every
call; ONNX Runtime FP32 and static INT8 (QDQ, per-channel, as ``baselines`` builds them) run with its
profiler on. The i-th layer kernel the VM calls and the i-th conv / GEMM node ONNX Runtime runs are the
model's i-th quantizable layer (both execute in topological order; the counts are checked). Everything
else (the VM's own instructions, pooling; ONNX Runtime's quantize / dequantize / transpose nodes) is
"rest". Per-call figures are medians over ``--rounds`` runs; the instrument's and the profiler's own
overheads are in them (a few µs a call), so the end-to-end medians, timed without either, are given
beside their sums. A diagnosis, not the headline: ``baselines`` is the comparison users should read.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.baselines import input_names, onnx_models, ort_session, tvm_vm
from benchmarks.common import BenchmarkResult, median_time_s
from mpsearch.report.markdown import markdown_table

NAME = "layers"
TITLE = "Layer by layer: mpsearch's compiled kernels beside ONNX Runtime's, same layers, same host"
#: ONNX Runtime node types that compute one of the model's quantizable layers.
LAYER_OPS = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "QLinearConv", "ConvInteger", "Gemm", "FusedGemm",
                       "QGemm", "MatMul", "FusedMatMul", "MatMulInteger", "QLinearMatMul"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="efficientnet_lite0", help="comma-separated: efficientnet_lite0, default")
    parser.add_argument("--trials", type=int, default=8, help="MetaSchedule trials per kernel")
    parser.add_argument("--rounds", type=int, default=20, help="instrumented / profiled runs per library")
    parser.add_argument("--batch", type=int, default=1,
                        help="batch size (> 1: TVM's kernels and the model's other ops tuned for it, as baselines does)")


def in_call_order(events: list[tuple[str, float]], is_layer: Any) -> tuple[list[float], float]:
    """Split one run's ``(name, seconds)`` events, in call order, into the layer calls' durations and
    the summed rest."""
    layers = [t for name, t in events if is_layer(name)]
    return layers, sum(t for name, t in events if not is_layer(name))


def per_layer_medians(runs: list[tuple[list[float], float]], n_layers: int, who: str) -> tuple[list[float], float]:
    """Median duration of each layer call and of the rest over ``runs`` (each from :func:`in_call_order`);
    a run that did not call exactly ``n_layers`` layer kernels is a mapping error, raised."""
    for layers, _ in runs:
        if len(layers) != n_layers:
            raise RuntimeError(f"{who} ran {len(layers)} layer kernels for a model of {n_layers} layers; "
                               "the layer-to-kernel mapping does not hold for this model")
    stacked = np.array([layers for layers, _ in runs])
    return [float(v) for v in np.median(stacked, axis=0)], float(np.median([rest for _, rest in runs]))


def tvm_profile(backend: Any, prepared: Any, candidate: Any, ranges: Any, xs: list[np.ndarray],
                rounds: int) -> dict[str, Any]:
    """Per-layer and rest µs of ``candidate``'s compiled library at the batch of ``xs`` (VM instrument),
    and its end-to-end ms."""
    vm = tvm_vm(backend, prepared, candidate, ranges, len(xs[0]), xs)
    call = lambda: vm.invoke_stateful("main")  # noqa: E731
    e2e = median_time_s(call, repeat=7, number=10)[0]
    events: list[tuple[str, float]] = []
    started: dict[str, float] = {}

    def instrument(_func: Any, name: str, before: bool, _ret: Any, *_args: Any) -> int:
        if before:
            started[name] = time.perf_counter()
        else:
            events.append((str(name), time.perf_counter() - started[name]))
        return 0

    vm.set_instrument(instrument)
    runs = []
    for _ in range(rounds):
        events.clear()
        call()
        runs.append(in_call_order(list(events), lambda n: n.startswith("layer")))
    layers, rest = per_layer_medians(runs, len(prepared.layers), "the TVM library")
    return {"layer_us": [t * 1e6 for t in layers], "rest_us": rest * 1e6, "e2e_ms": e2e * 1e3}


def ort_profile(path: Path, threads: int, feed: dict[str, np.ndarray], rounds: int, n_layers: int,
                work: Path) -> dict[str, Any]:
    """Per-layer and rest µs of an ONNX Runtime session (its profiler), and its end-to-end ms."""
    session = ort_session(path, threads)
    e2e = median_time_s(lambda: session.run(None, feed), repeat=7, number=10)[0]
    profiled = ort_session(path, threads, profile_prefix=str(work / path.stem))
    for _ in range(rounds):
        profiled.run(None, feed)
    trace = json.loads(Path(profiled.end_profiling()).read_text())
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace
                   if e.get("cat") == "Session" and e.get("name") == "model_run")
    nodes = sorted((e["ts"], e["args"]["op_name"], e["dur"] / 1e6) for e in trace
                   if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"))
    runs: list[list[tuple[str, float]]] = [[] for _ in spans]
    for ts, op, seconds in nodes:
        for i, (start, end) in enumerate(spans):
            if start <= ts <= end:
                runs[i].append((op, seconds))
                break
    parsed = [in_call_order(r, lambda op: op in LAYER_OPS) for r in runs[1:]]  # the first run warms up
    layers, rest = per_layer_medians(parsed, n_layers, f"ONNX Runtime ({path.name})")
    return {"layer_us": [t * 1e6 for t in layers], "rest_us": rest * 1e6, "e2e_ms": e2e * 1e3}


def _case(key: str, args: argparse.Namespace, work: Path) -> tuple[str, Any, Any, Any, list[Any], Any]:
    """``(name, model, prepared, ranges, calibration inputs, backend)`` of one model."""
    from mpsearch.hardware.tvm_backend import TVMBackend
    from mpsearch.pipeline import batches, build_model, configured_profile, load_data
    from mpsearch.quant.calibration import calibrate_for
    from mpsearch.quant.prepare import as_inputs, prepare_model

    if key == "default":
        from mpsearch.config import RunConfig

        cfg = RunConfig(results_dir=str(work / "results"), cache_dir=str(args.cache_dir), progress=False)
    else:
        from benchmarks.models import CASES, run_config

        opts = argparse.Namespace(cache_dir=args.cache_dir, threads=args.threads, quick=False, trials=args.trials,
                                  calib_samples=None, test_samples=None, search_trials=None)
        cfg = run_config(CASES[key], opts, work)
    cfg.hw_profile.threads, cfg.hw_profile.trials_per_task = args.threads, args.trials
    model = build_model(cfg).eval()
    prepared = prepare_model(model, as_inputs(cfg.model.input_specs()))
    calib = batches(load_data(cfg, "calib", 16), cfg.data.batch_size)
    ranges = calibrate_for(prepared.graph_module, prepared.layer_names, calib, cfg.search)
    backend = TVMBackend(configured_profile(cfg), Path(cfg.cache_dir), progress=False)
    return cfg.data.name or key, model, prepared, ranges, [x for x, _ in calib], backend


def _kind(li: Any, module: Any) -> str:
    """A layer's shape in words: ``1x1 16->96 @112``, ``dw3x3/2 96 @112``, ``fc 1280->1000`` (``module``:
    the prepared layer, for its stride and groups)."""
    w = li.weight_shape
    if li.kind != "conv2d":
        return f"fc {w[1]}->{w[0]}"
    stride = f"/{module.stride[0]}" if module.stride[0] != 1 else ""
    if module.groups > 1 and module.groups == w[0]:
        return f"dw{w[2]}x{w[3]}{stride} {w[0]} @{li.in_shape[-1]}"
    return f"{w[2]}x{w[3]}{stride} {li.in_shape[1]}->{w[0]} @{li.in_shape[-1]}"


def measure(key: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Profile model ``key``: uniform FP32 and INT8 through TVM, and ONNX Runtime FP32 and static INT8."""
    from mpsearch.candidate import Candidate

    name, model, prepared, ranges, calib, backend = _case(key, args, work)
    names = prepared.layer_names
    x = calib[0][np.arange(args.batch) % len(calib[0])].numpy()
    (work / name).mkdir(parents=True, exist_ok=True)
    onnx = onnx_models(model, (torch.from_numpy(x),), [(c[:1],) for c in calib[:4]], work / name)
    feed = {input_names(1)[0]: x}
    n = len(prepared.layers)
    rows = {
        "tvm_fp32": tvm_profile(backend, prepared, Candidate.uniform(names, 32, 32), ranges, [x], args.rounds),
        "ort_fp32": ort_profile(onnx["ort_fp32"], args.threads, feed, args.rounds, n, work),
        "tvm_int8": tvm_profile(backend, prepared, Candidate.uniform(names, 8, 8), ranges, [x], args.rounds),
        "ort_int8_static": ort_profile(onnx["ort_int8_static"], args.threads, feed, args.rounds, n, work),
    }
    layers = [{"name": li.name, "kind": _kind(li, prepared.graph_module.get_submodule(li.name))}
              for li in prepared.layers]
    return {"model": name, "layers": layers, "profiles": rows, "device": backend.describe(),
            "trials_per_kernel": args.trials, "batch": args.batch}


def _kind_group(kind: str) -> str:
    """The group a layer's time is summed in: its kernel kind and stride (``1x1``, ``dw5x5/2``, ``fc``)."""
    return kind.split()[0]


def render(case: dict[str, Any]) -> str:
    p = case["profiles"]
    cols = ["tvm_fp32", "ort_fp32", "tvm_int8", "ort_int8_static"]
    rows = []
    for i, layer in enumerate(case["layers"]):
        t = [p[c]["layer_us"][i] for c in cols]
        rows.append([str(i), layer["name"], layer["kind"], *(f"{v:.0f}" for v in t), f"{t[0] / t[1]:.2f}",
                     f"{t[2] / t[3]:.2f}"])
    groups: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(cols))
    for i, layer in enumerate(case["layers"]):
        for j, c in enumerate(cols):
            groups[_kind_group(layer["kind"])][j] += p[c]["layer_us"][i]
    group_rows = [[g, *(f"{v:.0f}" for v in vs), f"{vs[0] / vs[1]:.2f}", f"{vs[2] / vs[3]:.2f}"]
                  for g, vs in sorted(groups.items(), key=lambda kv: -kv[1][1])]
    sums = [sum(p[c]["layer_us"]) for c in cols]
    group_rows.append(["rest (VM / ORT other nodes)", *(f"{p[c]['rest_us']:.0f}" for c in cols), "", ""])
    group_rows.append(["end to end, uninstrumented (ms)", *(f"{p[c]['e2e_ms']:.3f}" for c in cols),
                       f"{p['tvm_fp32']['e2e_ms'] / p['ort_fp32']['e2e_ms']:.2f}",
                       f"{p['tvm_int8']['e2e_ms'] / p['ort_int8_static']['e2e_ms']:.2f}"])
    head = ["TVM FP32 µs", "ORT FP32 µs", "TVM INT8 µs", "ORT INT8 µs", "FP32 TVM÷ORT", "INT8 TVM÷ORT"]
    return "\n".join([
        f"## {case['model']}", "",
        f"{case['device']}; batch {case.get('batch', 1)}; every kernel tuned at {case['trials_per_kernel']} trials. "
        "Layer kinds: "
        "`kxk[/stride] in->out @input width`, `dw` depthwise, `fc` fully connected. Layer sums "
        f"{sums[0]:.0f} / {sums[1]:.0f} / {sums[2]:.0f} / {sums[3]:.0f} µs.", "",
        markdown_table(["layers", *head], group_rows), "",
        "<details><summary>every layer</summary>", "",
        markdown_table(["#", "layer", "kind", *head], rows), "", "</details>", ""])


def run(args: argparse.Namespace) -> BenchmarkResult:
    work = Path(tempfile.mkdtemp(prefix="mpsearch-layers-"))
    cases = [measure(key, args, work) for key in args.models.split(",")]
    text = "\n".join([__doc__.split("\n\n")[1].replace("\n", " "), "", *(render(c) for c in cases)])
    if args.batch == 1:
        return BenchmarkResult(NAME, TITLE, {"cases": cases}, text)
    return BenchmarkResult(f"{NAME}_b{args.batch}", f"{TITLE}, batch {args.batch}", {"cases": cases}, text,
                           command=f"python -m benchmarks layers --batch {args.batch}")
