"""Roofline: each tuned kernel of the default model against this host's measured roofs.

The roofs are measured here by micro-kernels TVM compiles for the profile's own target, at the pinned
thread count (one core's rate; the kernels are timed on one core too when ``--threads 1``):

* compute: fp32 FMAs (``llvm.fma``, 512-bit where the target has AVX-512) and, for the integer
  kernels, the int8 dot instruction they are built on (:attr:`TVMBackend.dot_isa`): VNNI
  ``vpdpbusd``, or AVX-512BW ``vpmaddwd``; on a target without either, the integer kernels are held
  to the fp32 roof. Twelve independent register accumulators, operands in L1: the instruction's peak
  rate, not a library's.
* memory: a vectorized streaming read of a buffer half the size of each cache level the host reports
  (L1d, L2, L3; L3 capped at 32 MiB) and of 1 GiB (DRAM). A kernel's memory roof is its arithmetic
  intensity times the bandwidth of the smallest level that holds its compulsory traffic (weights at
  their storage size, fp32 input and output: the kernels exchange fp32 tensors).

A kernel's roofline bound is the lower of the two; its share is achieved / bound.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.cases import default_case
from benchmarks.common import BenchmarkResult, median_time_s
from mpsearch.report.markdown import markdown_table
from mpsearch.search import bit_pairs, pair_label

NAME = "roofline"
TITLE = "Roofline: tuned kernels of the default model against the host's measured peaks"
ACCUMULATORS = 12  # independent chains: more than latency x ports of any FMA / dot unit
L3_CAP = 32 << 20  # an L3 reported as hundreds of MiB (a VM's view of a socket) is read at 32 MiB
DRAM_BYTES = 1 << 30


def blas_gflops(threads: int) -> float:
    """fp32 GEMM rate of PyTorch's BLAS at 2048^3 (what a vendor library reaches), for reference."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t, _ = median_time_s(lambda: a @ b, repeat=5, number=3, warmup=1)
    return 2 * 2048**3 / t / 1e9


def cache_levels(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> list[tuple[str, int]]:
    """``[("L1", bytes), ("L2", bytes), ...]``: the data and unified caches cpu0 reports, smallest first."""
    levels = {}
    for index in sorted(root.glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified"):
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1], 1)
            levels[f"L{level}"] = int(size.rstrip("KMG")) * scale
    return sorted(levels.items(), key=lambda kv: kv[1])


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


def _compile(func: Any, target: Any) -> Any:
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    return getattr(lib, "mod", lib)


def _best_s(mod: Any, args: list[Any]) -> float:
    import tvm

    return min(mod.time_evaluator("main", tvm.cpu(), number=5, repeat=5)(*args).results)


#: The instruction each compute peak is measured with: ``(operand dtype a, operand dtype b, operand
#: lanes, accumulator dtype, multiply-adds per instruction)``; "fma" is the fp32 roof, the others the
#: integer kernels' dot on that ``dot_isa``.
PEAK_OPS = {
    "fma": ("float32", "float32", 16, "float32", 16),
    "avx512vnni": ("uint8", "int8", 64, "int32", 64),  # vpdpbusd: 16 lanes x 4 byte products
    "avx512bw": ("int16", "int16", 32, "int32", 32),  # vpmaddwd: 16 lanes x 2 (the exact 16x2 dot)
}


def _peak_kernel(op: str, iterations: int) -> Any:
    """``ACCUMULATORS`` independent 16-lane accumulators, each updated ``iterations`` times by ``op``'s
    instruction on operands held in L1."""
    from tvm.script import tirx as T
    from tvm.target import codegen

    a_dtype, b_dtype, n, acc_dtype, _ = PEAK_OPS[op]
    acc = ACCUMULATORS
    # LLVM 21 retyped vpdpbusd's byte operands from <16 x i32> to <64 x i8>
    vnni_operand = "int8x64" if codegen.llvm_version_major() >= 21 else "int32x16"

    @T.prim_func
    def kernel(a: T.Buffer((n,), a_dtype), b: T.Buffer((n,), b_dtype), out: T.Buffer((acc * 16,), acc_dtype)):
        T.func_attr({"tirx.noalias": True})
        c = T.alloc_buffer((acc * 16,), acc_dtype, scope="local")
        for k in T.unroll(acc):
            c[T.ramp(k * 16, 1, 16)] = T.broadcast(T.Cast(acc_dtype, 0), 16)
        for i in range(iterations):
            for k in T.unroll(acc):
                if op == "fma":
                    c[T.ramp(k * 16, 1, 16)] = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.fma.v16f32"), c[T.ramp(k * 16, 1, 16)], a[T.ramp(0, 1, n)],
                        b[T.ramp(0, 1, n)], dtype="float32x16")
                elif op == "avx512vnni":
                    c[T.ramp(k * 16, 1, 16)] = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), c[T.ramp(k * 16, 1, 16)],
                        T.reinterpret(a[T.ramp(0, 1, n)], dtype=vnni_operand),
                        T.reinterpret(b[T.ramp(0, 1, n)], dtype=vnni_operand), dtype="int32x16")
                else:  # the accumulator is an operand too: a product of loop invariants would be hoisted
                    c[T.ramp(k * 16, 1, 16)] = c[T.ramp(k * 16, 1, 16)] + T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pmaddw.d.512"),
                        T.reinterpret(c[T.ramp(k * 16, 1, 16)], dtype="int16x32"), b[T.ramp(0, 1, n)],
                        dtype="int32x16")
        for k in T.unroll(acc):
            out[T.ramp(k * 16, 1, 16)] = c[T.ramp(k * 16, 1, 16)]

    return kernel


def compute_peaks(target: Any, dot_isa: str, iterations: int = 200_000) -> dict[str, float | None]:
    """fp32 FMA and int8 dot peaks (GFLOP/s, GOP/s; a multiply-add counts two) of one core of ``target``;
    ``int8_gops`` None where ``dot_isa`` has no measured instruction (:data:`PEAK_OPS`)."""
    import tvm

    def rate(op: str) -> float:
        a_dtype, b_dtype, n, acc_dtype, macs = PEAK_OPS[op]
        # a = 1, b = 0: every accumulator stays 0 (no overflow, no denormals), which the compiler cannot know
        args = [tvm.runtime.tensor(np.full(n, v, dtype)) for v, dtype in ((1, a_dtype), (0, b_dtype))]
        args.append(tvm.runtime.tensor(np.zeros(ACCUMULATORS * 16, acc_dtype)))
        seconds = _best_s(_compile(_peak_kernel(op, iterations), target), args)
        return iterations * ACCUMULATORS * macs * 2 / seconds / 1e9

    return {"fp32_gflops": rate("fma"), "int8_gops": rate(dot_isa) if dot_isa in PEAK_OPS else None}


def read_bandwidths(target: Any, levels: list[tuple[str, int]]) -> dict[str, float]:
    """GB/s of a vectorized streaming read of a buffer half the size of each level (L3 at most
    ``L3_CAP``), and of ``DRAM_BYTES`` for ``"DRAM"``."""
    import tvm
    from tvm.script import tirx as T

    def kernel(floats: int, reps: int) -> Any:
        chunk = 8 * 16  # eight independent vector sums

        @T.prim_func
        def read(x: T.Buffer((floats,), "float32"), out: T.Buffer((chunk,), "float32")):
            T.func_attr({"tirx.noalias": True})
            c = T.alloc_buffer((chunk,), "float32", scope="local")
            for k in T.unroll(8):
                c[T.ramp(k * 16, 1, 16)] = T.broadcast(T.float32(0), 16)
            for r in range(reps):
                for i in range(floats // chunk):
                    for k in T.unroll(8):
                        c[T.ramp(k * 16, 1, 16)] = c[T.ramp(k * 16, 1, 16)] + x[T.ramp(i * chunk + k * 16, 1, 16)]
            for k in T.unroll(8):
                out[T.ramp(k * 16, 1, 16)] = c[T.ramp(k * 16, 1, 16)]

        return read

    out = {}
    sizes = [(name, min(size // 2, L3_CAP)) for name, size in levels] + [("DRAM", DRAM_BYTES)]
    for name, size in sizes:
        floats = size // 4 // 128 * 128
        reps = max(1, (1 << 30) // (floats * 4) // 4)  # ~256 MiB read per call
        args = [tvm.runtime.tensor(np.ones(floats, "float32")), tvm.runtime.tensor(np.zeros(128, "float32"))]
        out[name] = floats * 4 * reps / _best_s(_compile(kernel(floats, reps), target), args) / 1e9
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cached-timings", action="store_true", help="reuse kernel timings of earlier runs")


def run(args: argparse.Namespace) -> BenchmarkResult:
    from mpsearch.hardware.profile import load_profile
    from mpsearch.hardware.tvm_backend import TVMBackend

    case = default_case()
    pairs = [(32, 32), (8, 8)] if args.quick else bit_pairs([4, 8, 32], [4, 8, 32])
    backend = TVMBackend(load_profile("host_cpu"), Path(args.cache_dir), progress=False)
    levels = cache_levels()
    core = compute_peaks(backend.target, backend.dot_isa)
    core_bandwidth = read_bandwidths(backend.target, levels)
    # the micro-kernels run on one core: compute and the private caches (L1, L2) scale with the threads
    # the kernels are timed with; a shared L3 and DRAM do not
    peaks = {k: (v * args.threads if v is not None else None) for k, v in core.items()}
    bandwidth = {k: v * (args.threads if k in ("L1", "L2") else 1) for k, v in core_bandwidth.items()}
    blas = blas_gflops(args.threads)
    if not args.cached_timings:
        backend.record_timings_in(Path(tempfile.mkdtemp(prefix="mpsearch-bench-")) / "costs.jsonl")
    table = backend.cost_table(case.prepared, case.ranges, pairs)
    rows, points = [], []
    for li in case.prepared.layers:
        for pair in pairs:
            t = table.latency_s[li.name][pair]
            flops = 2 * li.macs
            integer = pair[1] <= 8 and peaks["int8_gops"] is not None
            peak = float(peaks["int8_gops"] if integer else peaks["fp32_gflops"])  # type: ignore[arg-type]
            # compulsory traffic: weights at their storage size, fp32 input and output (kernels exchange fp32)
            traffic = table.weight_bytes[li.name][pair] + 4 * math.prod(li.in_shape) + 4 * math.prod(li.out_shape)
            bound, by = roof(flops, traffic, peak, levels, bandwidth)
            achieved = flops / t / 1e9
            points.append({"layer": li.name, "pair": pair_label(pair), "flops": flops, "bytes": traffic,
                           "latency_us": t * 1e6, "achieved_gflops": achieved, "achieved_gbps": traffic / t / 1e9,
                           "intensity_flop_per_byte": flops / traffic, "roofline_gflops": bound, "bound_by": by,
                           "memory_level": memory_level(traffic, levels), "pct_of_roofline": 100 * achieved / bound})
    by_pair = {}
    for pair in pairs:
        ps = [p for p in points if p["pair"] == pair_label(pair)]
        stats = {"median_pct_of_roofline": float(np.median([p["pct_of_roofline"] for p in ps])),
                 "best_gflops": max(p["achieved_gflops"] for p in ps),
                 "total_latency_us": sum(p["latency_us"] for p in ps),
                 "compute_bound_kernels": sum(p["bound_by"] == "compute" for p in ps), "kernels": len(ps)}
        by_pair[pair_label(pair)] = stats
        rows.append([pair_label(pair), f"{stats['total_latency_us']:.0f}", f"{stats['best_gflops']:.1f}",
                     f"{stats['compute_bound_kernels']} of {stats['kernels']}",
                     f"{stats['median_pct_of_roofline']:.1f}"])
    detail = sorted(points, key=lambda p: -p["flops"])[: 3 * len(pairs)]
    int8 = (f"int8 {backend.dot_isa} **{peaks['int8_gops']:.0f} GOP/s**" if peaks["int8_gops"] is not None
            else "no int8 dot instruction on this target: integer kernels are held to the fp32 roof")
    text = "\n".join([
        __doc__.split("\n\n", 1)[1].strip(), "",
        f"Measured here ({args.threads} thread(s) pinned; one core's rates x the threads for compute and L1/L2), "
        f"target `{backend.target.attrs.get('mcpu', '')}`: "
        f"fp32 FMA **{peaks['fp32_gflops']:.0f} GFLOP/s** (PyTorch's BLAS 2048³ GEMM: {blas:.0f}); {int8}; read "
        "bandwidth " + ", ".join(f"{name} **{bw:.0f} GB/s**" for name, bw in bandwidth.items())
        + " (cache sizes: " + ", ".join(f"{n} {s >> 10} KiB" for n, s in levels) + ").", "",
        markdown_table(["precision", "Σ kernel µs", "best GFLOP/s", "compute-bound", "median % of roofline"], rows),
        "", "Largest kernels:", "",
        markdown_table(["layer", "precision", "MFLOP", "µs", "GFLOP/s", "FLOP/B", "bound by", "% of roofline"],
                       [[p["layer"], p["pair"], f"{p['flops'] / 1e6:.2f}", f"{p['latency_us']:.1f}",
                         f"{p['achieved_gflops']:.2f}", f"{p['intensity_flop_per_byte']:.1f}", p["bound_by"],
                         f"{p['pct_of_roofline']:.1f}"] for p in detail]), ""])
    data = {"peaks": peaks, "one_core_peaks": core, "one_core_bandwidth_gbps": core_bandwidth, "blas_fp32_gflops": blas, "bandwidth_gbps": bandwidth, "cache_levels": dict(levels),
            "dot_isa": backend.dot_isa, "by_precision": by_pair, "kernels": points, "device": backend.describe()}
    return BenchmarkResult(NAME, TITLE, data, text)
