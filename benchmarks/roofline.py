"""Roofline: each tuned kernel of the default model, achieved GFLOP/s (GOP/s for integer kernels) and
GB/s against the host's peak compute and memory bandwidth, both measured here by micro-benchmarks."""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.cases import default_case
from benchmarks.common import BenchmarkResult, median_time_s
from mpsearch.report.markdown import markdown_table
from mpsearch.search import bit_pairs, pair_label

NAME = "roofline"
TITLE = "Roofline: tuned kernels of the default model against the host's measured peaks"


def peak_gflops(threads: int) -> float:
    """fp32 GEMM rate of PyTorch's BLAS at 2048^3 (the best this host does with a vendor library)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t, _ = median_time_s(lambda: a @ b, repeat=5, number=3, warmup=1)
    return 2 * 2048**3 / t / 1e9


def peak_gbps() -> float:
    """Copy bandwidth on a 256 MiB buffer (read + write counted)."""
    src = torch.empty(64 * 2**20, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    t, _ = median_time_s(lambda: dst.copy_(src), repeat=5, number=3, warmup=1)
    return 2 * src.numel() * 4 / t / 1e9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cached-timings", action="store_true", help="reuse kernel timings of earlier runs")


def run(args: argparse.Namespace) -> BenchmarkResult:
    from mpsearch.hardware.profile import load_profile
    from mpsearch.hardware.tvm_backend import TVMBackend

    gflops, gbps = peak_gflops(args.threads), peak_gbps()
    case = default_case()
    pairs = [(32, 32), (8, 8)] if args.quick else bit_pairs([4, 8, 32], [4, 8, 32])
    backend = TVMBackend(load_profile("host_cpu"), Path(args.cache_dir), progress=False)
    if not args.cached_timings:
        backend.record_timings_in(Path(tempfile.mkdtemp(prefix="mpsearch-bench-")) / "costs.jsonl")
    table = backend.cost_table(case.prepared, case.ranges, pairs)
    rows, points = [], []
    for li in case.prepared.layers:
        for pair in pairs:
            t = table.latency_s[li.name][pair]
            flops = 2 * li.macs
            a_bytes = 1 if pair[1] <= 8 else 4
            # Compulsory traffic: weights at their storage size, fp32 input and output (kernels exchange fp32).
            traffic = table.weight_bytes[li.name][pair] + 4 * math.prod(li.in_shape) + 4 * math.prod(li.out_shape)
            intensity = flops / traffic
            bound = min(gflops, intensity * gbps)
            achieved = flops / t / 1e9
            points.append({"layer": li.name, "pair": pair_label(pair), "flops": flops, "bytes": traffic,
                           "latency_us": t * 1e6, "achieved_gflops": achieved, "achieved_gbps": traffic / t / 1e9,
                           "intensity_flop_per_byte": intensity, "roofline_gflops": bound,
                           "pct_of_roofline": 100 * achieved / bound, "act_bytes_per_element": a_bytes})
    by_pair = {}
    for pair in pairs:
        ps = [p for p in points if p["pair"] == pair_label(pair)]
        by_pair[pair_label(pair)] = {
            "median_pct_of_roofline": float(np.median([p["pct_of_roofline"] for p in ps])),
            "best_gflops": max(p["achieved_gflops"] for p in ps),
            "total_latency_us": sum(p["latency_us"] for p in ps),
        }
        rows.append([pair_label(pair), f"{by_pair[pair_label(pair)]['total_latency_us']:.0f}",
                     f"{by_pair[pair_label(pair)]['best_gflops']:.1f}",
                     f"{by_pair[pair_label(pair)]['median_pct_of_roofline']:.1f}"])
    detail = sorted(points, key=lambda p: -p["flops"])[: 3 * len(pairs)]
    text = "\n".join([
        f"Peaks measured here: fp32 GEMM **{gflops:.1f} GFLOP/s** (PyTorch BLAS, 2048³), copy bandwidth "
        f"**{gbps:.1f} GB/s**. Roofline bound per kernel = min(peak GFLOP/s, intensity × bandwidth), with "
        "compulsory traffic = weights at storage size + fp32 input and output. Integer kernels' operations "
        "are counted like FLOPs and compared with the fp32 peak (no int8 GEMM library on this host runs "
        "faster than fp32; the host has no VNNI).", "",
        markdown_table(["precision", "Σ kernel µs", "best GFLOP/s", "median % of roofline"], rows), "",
        "Largest kernels:", "",
        markdown_table(["layer", "precision", "MFLOP", "µs", "GFLOP/s", "FLOP/B", "% of roofline"],
                       [[p["layer"], p["pair"], f"{p['flops'] / 1e6:.2f}", f"{p['latency_us']:.1f}",
                         f"{p['achieved_gflops']:.2f}", f"{p['intensity_flop_per_byte']:.1f}",
                         f"{p['pct_of_roofline']:.1f}"] for p in detail]), ""])
    data = {"peak_gflops": gflops, "peak_gbps": gbps, "by_precision": by_pair, "kernels": points,
            "device": backend.describe()}
    return BenchmarkResult(NAME, TITLE, data, text)
