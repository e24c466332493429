"""Per-precision kernel latency on representative shapes: where does low precision pay on this host?

Each shape is lowered to the same single-kernel form mpsearch's layers use (quantize the input inside
the kernel, integer or fp32 compute, dequantize), tuned with MetaSchedule at the given trial budget
and timed alone. Batch-1 linear layers are weight-bound (every weight is read once per inference), so
packed int4 weights should beat fp32 by moving 8× fewer bytes; convolutions are compute-bound.

Integer kernels take the host's exact blocked dot: 16x2 (``vpmaddwd``) in general, 16x4 (``vpmaddubsw``,
64 MACs an instruction) where a 4-bit operand keeps it from saturating (the unsigned-activation W4A8 and
W8A4 rows), or VNNI ``vpdpbusd`` on hosts that have it; the ``dot`` column of the JSON names it.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from benchmarks.common import BenchmarkResult, host_profile
from mpsearch.report.markdown import markdown_table

NAME = "kernels"
TITLE = "Kernel latency per precision (tuned TVM kernels, host CPU)"

#: (label, op, x_shape, w_shape, stride, padding)
SHAPES = [
    ("linear 1x1024 -> 1024", "linear", (1, 1024), (1024, 1024), (1, 1), (0, 0)),
    ("linear 1x4096 -> 4096", "linear", (1, 4096), (4096, 4096), (1, 1), (0, 0)),
    ("linear 1x512 -> 10 (a classifier head)", "linear", (1, 512), (10, 512), (1, 1), (0, 0)),
    ("conv 64x32x32, 3x3 -> 64", "conv2d", (1, 64, 32, 32), (64, 64, 3, 3), (1, 1), (1, 1)),
    ("conv 256x8x8, 3x3 -> 256", "conv2d", (1, 256, 8, 8), (256, 256, 3, 3), (1, 1), (1, 1)),
    ("conv 16x28x28, 3x3 -> 16 (ResNet-20 stage 1)", "conv2d", (1, 16, 28, 28), (16, 16, 3, 3), (1, 1), (1, 1)),
]
#: (label, w_mode, a_mode, a_bits); unsigned (post-ReLU) activations with a 4-bit operand take the 16x4 dot;
#: 2-bit weights ("i2p") are stored four a byte where the kernel takes the split layout (x86 GEMVs), else as
#: int4 codes, as the lowering does (mpsearch.hardware.lowering.kernel_spec)
PRECISIONS = [("FP32", "f32", "f32", 8), ("W8A8", "i8", "s8", 8), ("W4A8", "i4p", "s8", 8),
              ("W4A8 u8", "i4p", "u8", 8), ("W2A8 u8", "i2p", "u8", 8), ("W8A4 u8", "i8", "u8", 4),
              ("W8 weight-only", "i8", "f32", 8), ("W4 weight-only", "i4p", "f32", 8)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=32, help="MetaSchedule trials per kernel")


def run(args: argparse.Namespace) -> BenchmarkResult:
    from mpsearch.hardware.kernels import KernelSpec
    from mpsearch.hardware.tvm_backend import TVMBackend

    profile = host_profile(args.threads)
    trials = 2 if args.quick else args.trials
    profile = replace(profile, tuning=replace(profile.tuning, trials_per_task=trials,
                                              trials_per_iter=min(trials, profile.tuning.trials_per_iter)))
    backend = TVMBackend(profile, Path(args.cache_dir), progress=False)
    backend.record_timings_in(Path(tempfile.mkdtemp(prefix="mpsearch-bench-")) / "costs.jsonl")
    shapes = SHAPES[:1] if args.quick else SHAPES
    results: list[dict] = []
    for label, op, x_shape, w_shape, stride, padding in shapes:
        for prec, w_mode, a_mode, a_bits in PRECISIONS:
            spec = KernelSpec(op, x_shape, w_shape, "i4p" if w_mode == "i2p" else w_mode, a_mode, stride, padding,
                              a_bits=a_bits, dot_isa=backend.dot_isa)
            if w_mode == "i2p" and spec.split_codes:
                spec = replace(spec, w_mode="i2p")
            dot = f"16x{spec.kgroup}" if spec.packed else "plain"
            rec = backend.kernel_cost(spec, f"bench_{op}_{prec.replace(' ', '')}_{'x'.join(map(str, w_shape))}")
            results.append({"shape": label, "precision": prec, "dot": dot, "w_mode": spec.w_mode,
                            "split_codes": spec.split_codes,
                            "latency_us": rec["latency_s"] * 1e6, "std_us": rec["std_s"] * 1e6})
    rows = []
    for label, *_ in shapes:
        by = {r["precision"]: r for r in results if r["shape"] == label}
        base = by["FP32"]["latency_us"]
        rows.append([label] + [f"{by[p]['latency_us']:.1f} ({base / by[p]['latency_us']:.2f}×)"
                               for p, *_ in PRECISIONS])
    dots = {r["precision"]: r["dot"] for r in results if r["dot"] != "plain"}
    text = "\n".join([
        f"Latency in µs (speedup vs FP32 in brackets), each kernel tuned with MetaSchedule "
        f"({profile.tuning.strategy}, {trials} trials) and timed alone on {backend.describe()}.", "",
        markdown_table(["shape"] + [p for p, *_ in PRECISIONS], rows), "",
        "Integer dot layout where the shape tiles (16 output channels, channel pairs or quads): "
        + ", ".join(f"{p} {d}" for p, d in dots.items()) + f" (target ISA: {backend.dot_isa or 'none'})."
        + (" " + ", ".join(sorted({r["precision"] for r in results if r["split_codes"]}))
           + " on the one-row linear shapes (GEMVs): two int4 or four int2 16x4 tiles in the bit fields of one"
           " byte tile, split in registers by the dot itself (KernelSpec.split_codes); W2A8 elsewhere runs"
           " the int4 kernel on 2-bit codes." if any(r["split_codes"] for r in results) else ""), ""])
    data = {"trials": trials, "device": backend.describe(), "results": results}
    return BenchmarkResult(NAME, TITLE, data, text)
