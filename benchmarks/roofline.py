"""Roofline: each tuned kernel of a model (default: the default model) against this host's measured roofs.

The roofs are measured here by micro-kernels TVM compiles for the profile's own target
(``mpsearch/hardware/peaks.py``, which also measures the host profiles' ``peak: measure``), on one core
(a compute or private-cache rate x the pinned threads; the kernels are tuned, built and timed for the
pinned threads: with ``--threads 1``, one core and no parallel region):

* compute: twelve independent 16-lane accumulator chains of one instruction sequence, operands in
  registers: the instruction's peak rate, not a library's. fp32: ``llvm.fma``. int8: each dot the
  integer kernels are built on (kernels/intrinsics.py) that the target has (:attr:`TVMBackend.dot_isa`):
  VNNI's 16x4 ``vpdpbusd``; AVX-512BW's 16x4 ``vpmaddubsw`` + ``vpmaddwd``; the 16x2 ``vpmaddwd`` +
  add (``vpdpwssd`` on VNNI targets). Each kernel is held to the peak of the densest of these its
  tuned, compiled code contains, else to the fp32 peak: fp32 kernels, and integer kernels with no dot
  (plain loops, e.g. a 1-channel stem; depthwise convs summed with FMAs; targets without these dots).
* memory: a vectorized streaming read of a buffer half the size of each cache level the host reports
  (L1d, L2, L3; L3 capped at 32 MiB) and of 1 GiB (DRAM), repeated to ~256 MiB a call. A kernel's
  memory roof is its arithmetic intensity times the bandwidth of the smallest level that holds its
  compulsory traffic: its parameters (weights at their storage size, bias and scales), its input and
  its output, both fp32 (integer kernels quantize their fp32 input inside and write fp32).

A kernel's roofline bound is the lower of the two; its share is achieved / bound.

Where an integer conv's time goes besides its dots: its input staging (the fp32 input quantized and
zero-padded into the dot's channel-group layout, :func:`~mpsearch.hardware.kernels.integer.conv_input_codes`)
is compiled alone, scheduled as the hand-built recipe schedules it, and timed the same way; its share of
the kernel's latency is the ``staging`` column. That pass is what passing integer codes between layers
(the producer's epilogue writing the consumer's layout) would remove.
"""

from __future__ import annotations

import argparse
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.cases import CASES
from benchmarks.common import BenchmarkResult, host_profile, median_time_s
from mpsearch.hardware.cpu import cpu_features
from mpsearch.hardware.peaks import DOT_NAMES, DOTS, FMA, cache_levels, compute_peaks, read_bandwidths
from mpsearch.report.markdown import markdown_table
from mpsearch.search import bit_pairs, pair_label

NAME = "roofline"
TITLE = "Roofline: tuned kernels against the host's measured peaks"


def blas_gflops(threads: int) -> float:
    """fp32 GEMM rate of PyTorch's BLAS at 2048^3 (what a vendor library reaches), for reference."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t, _ = median_time_s(lambda: a @ b, repeat=5, number=3, warmup=1)
    return 2 * 2048**3 / t / 1e9


def memory_level(traffic: float, levels: list[tuple[str, int]]) -> str:
    """The smallest cache level whose capacity holds ``traffic`` bytes, else ``"DRAM"``."""
    return next((name for name, size in levels if traffic <= size), "DRAM")


def roof(flops: float, traffic: float, peak: float, levels: list[tuple[str, int]],
         bandwidth: dict[str, float]) -> tuple[float, str]:
    """``(bound in GFLOP/s, what bounds it)``: the compute ``peak`` or intensity x the bandwidth of the
    level that holds the kernel's ``traffic`` (:func:`memory_level`)."""
    level = memory_level(traffic, levels)
    memory = flops / traffic * bandwidth[level]
    return (peak, "compute") if peak <= memory else (memory, level)


def kernel_instruction(asm: str) -> str:
    """The roof a kernel's assembly ``asm`` is held to: the densest of :data:`DOTS` it contains, else
    :data:`FMA`."""
    return next((dot for dot, names in DOTS.items() if any(re.search(rf"\b{n}\b", asm) for n in names)), FMA)


def compute_roof(instruction: str, peaks: dict[str, float]) -> tuple[str, float]:
    """``(roof name, GOP/s)`` of a kernel built on ``instruction``: its measured peak, or the FMA peak
    where this host's peaks lack it."""
    return (instruction, peaks[instruction]) if instruction in peaks else (FMA, peaks[FMA])


def kernel_code(backend: Any, mod: Any) -> str:
    """The assembly of kernel ``mod`` as tuned in ``backend``'s database ("" where it has no record)."""
    import tvm

    sch = backend.db.query_schedule(mod, backend.target, workload_name="main")
    if sch is None:
        return ""
    return tvm.compile(sch.mod, target=backend.target).mod.inspect_source("asm")


def staging_us(spec: Any, target: Any, number: int = 200, repeat: int = 9) -> float | None:
    """Microseconds the input staging of the blocked integer conv ``spec`` takes alone on ``target`` (the
    module docstring), within :func:`~mpsearch.hardware.fpenv.denormals_flushed` as the kernels are timed;
    None for other kernels."""
    import tvm
    from tvm import s_tir, te

    from mpsearch.hardware.fpenv import denormals_flushed
    from mpsearch.hardware.kernels.integer import conv_input_codes
    from mpsearch.hardware.kernels.schedules import schedule_input_codes

    if not spec.packed or spec.op != "conv2d":
        return None
    qp_shape = next(shape for name, shape, _ in spec.inputs() if name == "qp")
    x, qp = te.placeholder(spec.x_shape, "float32", name="x"), te.placeholder(qp_shape, "float32", name="qp")
    codes = conv_input_codes(spec, x, qp)
    sch = s_tir.Schedule(te.create_prim_func([x, qp, codes]))
    schedule_input_codes(sch, parallel=int(target.attrs.get("num-cores", 0)) != 1)
    mod = tvm.compile(sch.mod, target=target).mod
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.standard_normal(spec.x_shape).astype("float32")),
            tvm.runtime.tensor(np.array([10.0, 0.0, 255.0, 0.1, 7.0][: qp_shape[0]], np.float32)),
            tvm.runtime.tensor(np.zeros([int(d) for d in codes.shape], str(codes.dtype)))]
    with denormals_flushed():
        return 1e6 * min(mod.time_evaluator("main", tvm.cpu(), number=number, repeat=repeat)(*args).results)


def vendor_int8_gops(threads: int, n: int = 2048) -> float | None:
    """``torch._int_mm`` (s8 x s8 -> s32 GEMM, oneDNN: AMX where the host has it) at ``n``^3, GOP/s; None
    where this PyTorch has no CPU kernel for it. A vendor library's rate, for reference only."""
    torch.set_num_threads(threads)
    a, b = (torch.randint(-128, 128, (n, n), dtype=torch.int8) for _ in range(2))
    try:
        t, _ = median_time_s(lambda: torch._int_mm(a, b), repeat=5, number=2, warmup=1)
    except (RuntimeError, AttributeError):
        return None
    return 2 * n**3 / t / 1e9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cached-timings", action="store_true", help="reuse kernel timings of earlier runs")
    parser.add_argument("--model", default="resnet20_fmnist", choices=sorted(CASES),
                        help="the model whose kernels are placed (default: the default model)")


def run(args: argparse.Namespace) -> BenchmarkResult:
    from mpsearch.candidate import Candidate
    from mpsearch.hardware.tvm_backend import TVMBackend

    case = CASES[args.model]()
    layers = case.prepared.layer_names
    pairs = [(32, 32), (8, 8)] if args.quick else bit_pairs([4, 8, 32], [4, 8, 32])
    backend = TVMBackend(host_profile(args.threads), Path(args.cache_dir), progress=False)
    levels = cache_levels()
    core = compute_peaks(backend.target, backend.dot_isa)
    core_bandwidth = read_bandwidths(backend.target, levels)
    # the micro-kernels run on one core: compute and the private caches (L1, L2) scale with the threads
    # the kernels are timed with; a shared L3 and DRAM do not
    peaks = {k: v * args.threads for k, v in core.items()}
    bandwidth = {k: v * (args.threads if k in ("L1", "L2") else 1) for k, v in core_bandwidth.items()}
    blas = blas_gflops(args.threads)
    vendor_int8 = vendor_int8_gops(args.threads)
    if not args.cached_timings:
        backend.record_timings_in(Path(tempfile.mkdtemp(prefix="mpsearch-bench-")) / "costs.jsonl")
    table = backend.cost_table(case.prepared, case.ranges, pairs)
    code: dict[str, str] = {}  # kernel key -> the roof its tuned code is held to
    staged: dict[str, float | None] = {}  # kernel key -> its input staging alone, us (integer convs)
    rows, points = [], []
    for pair in pairs:
        lowered, per_layer = backend.layer_kernels(case.prepared, Candidate.uniform(layers, *pair), case.ranges)
        for li in case.prepared.layers:
            key, _, mod = per_layer[li.name]
            if key not in code:
                code[key] = kernel_instruction(kernel_code(backend, mod))
                staged[key] = staging_us(lowered.kernels[li.name], backend.target)
            t = table.latency_s[li.name][pair]
            flops = 2 * li.macs
            by_compute, peak = compute_roof(code[key], peaks)
            traffic = table.weight_bytes[li.name][pair] + 4 * math.prod(li.in_shape) + 4 * math.prod(li.out_shape)
            bound, by = roof(flops, traffic, peak, levels, bandwidth)
            level = memory_level(traffic, levels)
            achieved = flops / t / 1e9
            points.append({"layer": li.name, "pair": pair_label(pair), "flops": flops, "bytes": traffic,
                           "latency_us": t * 1e6, "achieved_gflops": achieved, "achieved_gbps": traffic / t / 1e9,
                           "intensity_flop_per_byte": flops / traffic, "compute_roof": by_compute,
                           "compute_peak_gflops": peak, "memory_level": level,
                           "memory_roof_gflops": flops / traffic * bandwidth[level],
                           "roofline_gflops": bound, "bound_by": by, "pct_of_roofline": 100 * achieved / bound,
                           "staging_us": staged[key],
                           "staging_pct": None if staged[key] is None else 100 * staged[key] / (t * 1e6)})
    by_pair = {}
    for pair in pairs:
        ps = [p for p in points if p["pair"] == pair_label(pair)]
        staging = [p["staging_pct"] for p in ps if p["staging_pct"] is not None]
        roofs = sorted({p["compute_roof"] for p in ps}, key=lambda r: -sum(p["compute_roof"] == r for p in ps))
        stats = {"median_pct_of_roofline": float(np.median([p["pct_of_roofline"] for p in ps])),
                 "best_gflops": max(p["achieved_gflops"] for p in ps),
                 "total_latency_us": sum(p["latency_us"] for p in ps),
                 "compute_roofs": {r: sum(p["compute_roof"] == r for p in ps) for r in roofs},
                 "compute_bound_kernels": sum(p["bound_by"] == "compute" for p in ps), "kernels": len(ps),
                 "median_staging_pct": float(np.median(staging)) if staging else None}
        by_pair[pair_label(pair)] = stats
        rows.append([pair_label(pair), f"{stats['total_latency_us']:.0f}", f"{stats['best_gflops']:.1f}",
                     ", ".join(f"{r} {n}" for r, n in stats["compute_roofs"].items()),
                     f"{stats['compute_bound_kernels']} of {stats['kernels']}",
                     f"{stats['median_pct_of_roofline']:.1f}",
                     "—" if not staging else f"{stats['median_staging_pct']:.0f} ({len(staging)} convs)"])
    overall = float(np.median([p["pct_of_roofline"] for p in points]))
    detail = [p for pair in pairs  # each precision's three largest kernels
              for p in sorted((q for q in points if q["pair"] == pair_label(pair)), key=lambda q: -q["flops"])[:3]]
    ordered = list(bandwidth.values()) == sorted(bandwidth.values(), reverse=True)
    features = cpu_features()
    vendor = "" if vendor_int8 is None else (
        f" For reference, not used by mpsearch's kernels: PyTorch's `torch._int_mm` (oneDNN; the host "
        f"{'has' if 'amx_int8' in features else 'has no'} AMX-INT8) reaches **{vendor_int8:.0f} GOP/s** on an "
        f"int8 2048³ GEMM, and its fp32 2048³ GEMM {blas:.0f} GFLOP/s.")
    text = "\n".join([
        __doc__.split("\n\n", 1)[1].strip(), "",
        f"Measured here ({args.threads} thread(s) pinned; one core's rates x the threads for compute and L1/L2) "
        f"for target `{backend.target.attrs.get('mcpu', '')}` (int8 dots: `{backend.dot_isa or 'none'}`; "
        f"host CPU features: {' '.join(features) or 'unknown'}): compute "
        + ", ".join(f"{DOT_NAMES[k]} **{v:.0f} G{'FLOP' if k == FMA else 'OP'}/s**" for k, v in peaks.items())
        + "; read bandwidth " + ", ".join(f"{name} **{bw:.0f} GB/s**" for name, bw in bandwidth.items())
        + " (cache sizes: " + ", ".join(f"{n} {s >> 10} KiB" for n, s in levels) + ")."
        + ("" if ordered else " The bandwidths do not fall level by level: a disturbed measurement.") + vendor,
        "", f"Model: {case.description}.", "",
        markdown_table(["precision", "Σ kernel µs", "best GFLOP/s", "compute roofs (kernels)", "compute-bound",
                        "median % of roofline", "median staging % (integer convs)"], rows),
        "", f"All {len(points)} kernels: median **{overall:.1f}%** of the roofline.",
        "", "Largest kernels of each precision:", "",
        markdown_table(["layer", "precision", "MFLOP", "µs", "GFLOP/s", "FLOP/B", "compute roof", "memory level",
                        "bound by", "% of roofline", "staging µs"],
                       [[p["layer"], p["pair"], f"{p['flops'] / 1e6:.2f}", f"{p['latency_us']:.1f}",
                         f"{p['achieved_gflops']:.2f}", f"{p['intensity_flop_per_byte']:.1f}", p["compute_roof"],
                         p["memory_level"], p["bound_by"], f"{p['pct_of_roofline']:.1f}",
                         "—" if p["staging_us"] is None else f"{p['staging_us']:.1f}"] for p in detail]), ""])
    data = {"model": case.name, "peaks": peaks, "one_core_peaks": core, "one_core_bandwidth_gbps": core_bandwidth,
            "bandwidth_gbps": bandwidth, "bandwidth_falls_by_level": ordered, "cache_levels": dict(levels),
            "blas_fp32_gflops": blas, "torch_int_mm_gops": vendor_int8, "dot_isa": backend.dot_isa,
            "cpu_features": features, "by_precision": by_pair, "median_pct_of_roofline": overall, "kernels": points,
            "device": backend.describe()}
    return BenchmarkResult(NAME, TITLE, data, text)
