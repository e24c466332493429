"""Roofline estimates: price a profile that cannot be measured from here, explicitly and labelled so.

Only for a profile with ``cost: estimated`` (``hw_profile.cost=estimated``, or e.g.
``hw_profile=rpi4_estimated``); an unreachable measured profile stays an error, never a silent fall
back to this. Every number an :class:`EstimateBackend` returns is an estimate, and the pipeline labels
it so everywhere (``latency_source: estimated`` in ``summary.json`` and ``pareto.csv``, "estimated
latency (roofline)" in tables and plots).

A layer kernel at a bit pair costs::

    max(ops / peak rate of its arithmetic, bytes moved / DRAM bandwidth) + launch overhead

with the exact operations and bytes of the kernel the TVM lowering produces for it (``KernelSpec``):
2 x MACs at the int8 rate when weights and activations are both integer, at ``peak.fp16_gflops`` when
both are fp16 (W16A16), else at the fp32 rate (weight-only and activation-only kernels dequantize to
fp32 and compute in fp32); bytes = the fp32 input, the weights at their storage size (int8 codes, int4
packed two per byte, fp16 or fp32), scales,
bias, quantizer parameters, residual inputs and the fp32 output. The rest of the model (pooling,
unfused adds) is priced the same way from its Relax ops. Peak rates and their source are the profile's
``peak`` section: a target's datasheet numbers, or for ``peak: measure`` (the host profiles) this
machine's, measured by micro-kernels the first time they are needed and cached (``hardware/peaks.py``).

Memory is not estimated: weight bytes are exact (as in the measured mode), the planned activation
storage comes from TVM's static memory plan (compilation only), and a kernel's workspace is read off
its *unscheduled* TIR (an upper bound: a tuned schedule may keep some buffers in registers).

Compile-only: the model is also built for the profile's target (aarch64 cross-compile, CUDA + nvcc;
``build.py``) when the toolchain is installed, proving that the priced code compiles there; the result
(built / not built and why) is cached by content and shown in the report. Imports TVM: load lazily.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.candidate import Bits, Candidate
from mpsearch.errors import ConfigError, HardwareError
from mpsearch.hardware.base import ESTIMATED, Backend, LayerCostTable, Measurement
from mpsearch.hardware.peaks import resolve_peak
from mpsearch.hardware.profile import HwProfile, PeakRates
from mpsearch.hashing import content_hash
from mpsearch.quant.prepare import PreparedModel
from mpsearch.storage import JsonLines

log = logging.getLogger(__name__)

_DTYPE_BYTES = {"float32": 4.0, "float16": 2.0, "int8": 1.0, "uint8": 1.0, "int32": 4.0}


@dataclass(frozen=True)
class KernelEstimate:
    """Roofline of one kernel: its operations and bytes, and the time each would take at the peak."""

    ops: int
    bytes: int
    arithmetic: str  # "fp32" | "fp16" | "int8": whose peak rate bounds the compute
    compute_s: float
    memory_s: float
    launch_s: float

    @property
    def latency_s(self) -> float:
        return max(self.compute_s, self.memory_s) + self.launch_s

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"


def kernel_bytes(spec: Any) -> int:
    """Bytes a layer kernel reads and writes: every input at its storage size plus the output, fp32 or
    a byte a code (:attr:`~mpsearch.hardware.kernels.KernelSpec.codes_out`)."""
    moved = sum(math.prod(shape) * _DTYPE_BYTES[dtype] for _, shape, dtype in spec.inputs())
    return int(moved + (1 if spec.codes_out else 4) * math.prod(spec.out_shape))


def kernel_arithmetic(spec: Any) -> str:
    """The arithmetic a kernel's inner loop runs: int8 x int8 -> int32 when both operands are integer
    (packed int4 weights are unpacked to int8 inside the kernel), fp16 x fp16 with fp32 accumulation
    when both are half (``kernels/fp16.py``) or when half activations meet integer weight codes on a
    GPU's tensor cores (``kernels/gemm.py``), fp32 otherwise."""
    if spec.a_mode == "f16" and (spec.w_mode == "f16" or spec.tensor_core):
        return "fp16"
    return "int8" if spec.integer else "fp32"  # u8 / s8 / z8 (zero-point) codes against int8 / int4 weights


def estimate_kernel(spec: Any, peak: PeakRates) -> KernelEstimate:
    """Roofline time of the layer kernel ``spec`` (a :class:`~mpsearch.hardware.kernels.KernelSpec`)."""
    arithmetic = kernel_arithmetic(spec)
    rate = {"int8": peak.int8_gops, "fp16": peak.fp16_gflops or peak.fp32_gflops}.get(arithmetic, peak.fp32_gflops)
    ops, moved = spec.flops(), kernel_bytes(spec)
    return KernelEstimate(ops, moved, arithmetic, ops / (rate * 1e9), moved / (peak.dram_gbps * 1e9),
                          peak.launch_us * 1e-6)


def other_ops_estimate(mod: Any, peak: PeakRates, func_name: str = "main") -> tuple[float, int]:
    """Roofline time of the model's ops outside the layer kernels (pooling, unfused ReLU / add):
    memory-bound elementwise work, bytes = inputs + output, plus one launch each; reshapes are free.
    Returns ``(seconds, number of ops)``."""
    import tvm
    from tvm import relax

    def nbytes(expr: Any) -> float:
        ty = getattr(expr, "ty", None)
        shape = getattr(ty, "shape", None)
        if not isinstance(ty, relax.TensorType) or shape is None:
            return 0.0
        dims = [int(d) for d in shape.values]
        return math.prod(dims) * _DTYPE_BYTES.get(str(ty.dtype), 4.0)

    seconds, count = 0.0, 0
    for block in mod[func_name].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
                continue
            if call.op.name in ("relax.call_tir", "relax.reshape"):
                continue
            moved = nbytes(binding.var) + sum(nbytes(a) for a in call.args if isinstance(a, relax.Expr))
            seconds += moved / (peak.dram_gbps * 1e9) + peak.launch_us * 1e-6
            count += 1
    return seconds, count


def _target_text(profile: HwProfile) -> str:
    """The target in a few words, e.g. ``llvm aarch64-linux-gnu cortex-a72`` or ``cuda sm_90``."""
    t = profile.target
    return " ".join(str(t[k]) for k in ("kind", "mtriple", "mcpu", "arch") if k in t)


def _spec_key(spec: Any) -> str:
    return content_hash(repr(spec).encode(), length=16)


class EstimateBackend(Backend):
    """Prices every layer x bit pair by roofline from the profile's peak rates (see the module docstring).

    Nothing is tuned, timed or run: :meth:`measure` returns the roofline of the whole candidate (an
    estimate, ``latency_source = "estimated"``), :meth:`run` refuses. Construction never contacts the
    device, so it works for boards and GPUs this machine cannot reach; it is chosen only when the
    profile says ``cost: estimated``.
    """

    name = "estimate"
    latency_source = ESTIMATED

    def __init__(self, profile: HwProfile, cache_dir: Path, progress: bool = True, compile_check: bool = True) -> None:
        if not profile.estimated:
            raise ConfigError(f"hardware profile {profile.name!r} has cost {profile.cost!r}; roofline estimates "
                              "are used only when asked for: set hw_profile.cost=estimated")
        peak = resolve_peak(profile)  # peak: measure: this machine's, cached (measured the first time: seconds)
        if peak is None:
            raise ConfigError(f"hardware profile {profile.name!r} has no peak section to estimate from; add "
                              "peak: {fp32_gflops, int8_gops, dram_gbps, launch_us} (or peak: measure on this "
                              "machine) to its YAML")
        self.profile = profile
        self.peak = peak
        self.progress = progress
        self.compile_check = compile_check
        ident = content_hash([profile.name, profile.target, profile.cross_compiler], length=12)
        self.dir = Path(cache_dir) / "estimate" / f"{profile.name}-{ident}"
        self.builds = JsonLines(self.dir / "builds.jsonl", required=("status",))
        self.build_status: str | None = None
        self._other: dict[str, float] = {}

    # -- pricing -----------------------------------------------------------------------------------

    def describe(self) -> str:
        p = self.peak
        fp16 = f", fp16 {p.fp16_gflops:g} GFLOP/s" if p.fp16_gflops else ""
        return (f"{self.profile.description or self.profile.name}: ESTIMATED by roofline, not measured "
                f"(peaks: fp32 {p.fp32_gflops:g} GFLOP/s, int8 {p.int8_gops:g} GOP/s{fp16}, DRAM {p.dram_gbps:g} GB/s, "
                f"{p.launch_us:g} µs per kernel; {p.source or 'source not given'})")

    def report_notes(self) -> list[str]:
        notes = [
            "Latencies are ESTIMATED, not measured: per kernel max(operations / peak rate, bytes moved / DRAM "
            "bandwidth) + launch overhead, from the profile's peak rates (" + (self.peak.source or "no source given")
            + "). Operations and bytes are exact for the lowered kernels (2 x MACs; weights at their packed "
            "storage size); int8 x int8 kernels use the int8 peak, all others the fp32 peak. A roofline is a "
            "lower bound a real kernel reaches only in part (on the development host tuned kernels reached "
            "a median 7-20% of it), so compare estimated candidates with each other, not with measurements.",
            "Estimated end-to-end latency = the sum of the layers' kernel estimates + the rest of the model "
            "priced the same way; predicted and 'measured' columns are both this estimate, so the cost model "
            "is not checked in an estimated run.",
        ]
        if self.build_status is not None:
            notes.append(f"Compile-only check for {self.profile.name}: {self.build_status}.")
        return notes

    def _layer_estimates(self, prepared: PreparedModel, candidate: Candidate,
                         ranges: Mapping[str, tuple[float, float]]) -> tuple[Any, dict[str, KernelEstimate]]:
        from mpsearch.hardware.lowering import lower

        lowered = lower(prepared, candidate, ranges)
        return lowered, {name: estimate_kernel(spec, self.peak) for name, spec in lowered.kernels.items()}

    def _rest_s(self, lowered: Any) -> float:
        import tvm_ffi

        key = format(tvm_ffi.structural_hash(lowered.mod) & (2**64 - 1), "016x")
        if key not in self._other:
            self._other[key] = other_ops_estimate(lowered.mod, self.peak)[0]
        return self._other[key]

    def cost_table(
        self, prepared: PreparedModel, ranges: Mapping[str, tuple[float, float]], pairs: Sequence[Bits]
    ) -> LayerCostTable:
        from mpsearch.hardware.kernels import make_kernel
        from mpsearch.hardware.memory_plan import plan_activation_memory, workspace_bytes

        self.profile.precisions.check(self.profile.name, pairs)
        layers = prepared.layer_names
        latency: dict[str, dict[Bits, float]] = {n: {} for n in layers}
        weight_bytes: dict[str, dict[Bits, int]] = {n: {} for n in layers}
        kernel_of: dict[str, dict[Bits, str]] = {n: {} for n in layers}
        workspace: dict[str, dict[Bits, int]] = {n: {} for n in layers}
        ws_of: dict[str, int] = {}
        lowered = None
        for pair in pairs:
            # A layer's kernel depends only on its own bits, so uniform candidates cover every (layer, pair).
            lowered, est = self._layer_estimates(prepared, Candidate.uniform(layers, *pair), ranges)
            for name, spec in lowered.kernels.items():
                key = _spec_key(spec)
                if key not in ws_of:
                    ws_of[key] = workspace_bytes(make_kernel(spec))
                latency[name][tuple(pair)] = est[name].latency_s
                weight_bytes[name][tuple(pair)] = lowered.layer_param_bytes[name]
                kernel_of[name][tuple(pair)] = key
                workspace[name][tuple(pair)] = ws_of[key]
        table = LayerCostTable(self.profile.name, layers, [tuple(p) for p in pairs], latency, weight_bytes,
                               kernel_of, workspace_bytes=workspace)
        if lowered is not None:
            table.activation_bytes = plan_activation_memory(lowered.mod).planned_bytes
            table.other_s = self._rest_s(lowered)
        log.info("%d layers x %d bit pairs priced by roofline for %s (%d distinct kernels)", len(layers),
                 len(pairs), self.profile.name, len(ws_of))
        if self.compile_check and pairs:
            pair = (8, 8) if (8, 8) in [tuple(p) for p in pairs] else tuple(pairs[0])
            self.build_status = self.check_build(prepared, Candidate.uniform(layers, *pair), ranges)
        return table

    # -- compile-only ------------------------------------------------------------------------------

    def _missing_toolchain(self) -> str | None:
        from mpsearch.hardware.cuda_schedule import nvcc_available

        if self.profile.is_gpu and not nvcc_available():
            return "nvcc not found (install the CUDA toolkit to compile the GPU kernels)"
        cc = self.profile.cross_compiler
        if cc and shutil.which(cc) is None:
            return f"cross compiler {cc} not found (Debian: apt-get install gcc-aarch64-linux-gnu)"
        return None

    def check_build(self, prepared: PreparedModel, candidate: Candidate,
                    ranges: Mapping[str, tuple[float, float]]) -> str:
        """Compile ``candidate`` for the profile's target (untuned, nothing run) and say how it went:
        ``built ...``, ``not built: <missing toolchain>`` or ``build failed: ...``. Cached by content."""
        import tvm_ffi

        from mpsearch.hardware.build import build_untuned
        from mpsearch.hardware.lowering import lower

        mod_key = format(tvm_ffi.structural_hash(lower(prepared, candidate, ranges).mod) & (2**64 - 1), "016x")
        key = f"build-{mod_key}"
        cached = self.builds.get(key)
        if cached is not None:
            return str(cached["status"])
        missing = self._missing_toolchain()
        if missing is not None:
            return f"{candidate.describe()} not built: {missing}"  # not cached: installing the toolchain fixes it
        out = self.dir / "build" / mod_key
        try:
            art = build_untuned(self.profile, prepared, candidate, ranges, out)
        except HardwareError as e:
            status = f"{candidate.describe()} build failed: {e}"
        else:
            extra = f" + {art.device_code.name} (nvcc)" if art.device_code is not None else ""
            status = (f"{candidate.describe()} built for {_target_text(self.profile)} "
                      f"({art.elf.machine} {art.elf.type} shared object{extra}, untuned; not run)")
        log.info("compile-only check: %s", status)
        self.builds.put({"key": key, "status": status})
        return status

    # -- end to end --------------------------------------------------------------------------------

    def measure(self, prepared: PreparedModel, candidate: Candidate,
                ranges: Mapping[str, tuple[float, float]]) -> Measurement:
        """The roofline of the whole candidate (an estimate: nothing is timed)."""
        lowered, est = self._layer_estimates(prepared, candidate, ranges)
        total = sum(e.latency_s for e in est.values()) + self._rest_s(lowered)
        return Measurement(total, 0.0, None, (total,))

    def run(self, prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]],
            inputs: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        raise HardwareError(f"hardware profile {self.profile.name!r} is estimated (roofline): nothing runs on "
                            "the device from here; use a measured profile to run the model")


__all__ = ["EstimateBackend", "KernelEstimate", "estimate_kernel", "kernel_arithmetic", "kernel_bytes",
           "other_ops_estimate"]
