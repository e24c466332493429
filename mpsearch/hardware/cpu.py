"""What CPU this is, read from ``/proc/cpuinfo``, for peak-rate cache keys (:mod:`.peaks`), device
descriptions (:mod:`.tvm_backend`), benchmark headers, and the LLVM CPU a host target compiles for
(:func:`host_llvm_cpu`, the only function here that imports TVM)."""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterable
from pathlib import Path

# the SIMD features that decide which kernels and dot instructions a host runs (x86, then aarch64)
SIMD_FLAGS = ("sse4_2", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_vpopcntdq",
              "avx512_bf16", "amx_int8", "asimd", "asimddp", "i8mm", "sve")


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> list[str]:
    """The :data:`SIMD_FLAGS` this CPU reports in ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in SIMD_FLAGS if f in have]
    except OSError:
        pass
    return []


# x86 instruction-set extensions an LLVM CPU name implies, as LLVM spells them without '-' (cpuinfo spells
# most of them with '_': compared with both removed)
X86_ISA = frozenset({
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512vnni",
    "avx512bf16", "avx512fp16", "avx512vbmi", "avx512vbmi2", "avx512bitalg", "avx512vpopcntdq", "avx512ifma",
    "avxvnni", "avxifma", "avxvnniint8", "avxvnniint16", "amxtile", "amxint8", "amxbf16", "amxfp16", "amxcomplex",
})


def _isa(features: Iterable[str]) -> frozenset[str]:
    return frozenset(f.lower().replace("_", "").replace("-", "") for f in features) & X86_ISA


def host_isa() -> frozenset[str]:
    """The :data:`X86_ISA` extensions this CPU reports in ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return _isa(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def best_llvm_cpu(detected: str, host: frozenset[str], cpus: dict[str, frozenset[str]]) -> str:
    """The LLVM CPU name to compile for: of the CPUs in ``cpus`` (name -> its :data:`X86_ISA` extensions)
    whose extensions the host (``host``) all has, one with the most of them: ``detected`` (LLVM's own
    guess, from the CPUID family and model) where it is one, else the first such name.

    LLVM names a CPU by its model number, and a virtual machine may report one that does not match its
    features: a Sapphire Rapids Xeon VM (AMX, AVX-512 FP16 and BF16, AVX-VNNI) reporting Rocket Lake's
    model number is compiled for ``rocketlake``, and its tuned EfficientNet-Lite0 ran 4.7% slower in
    FP32 than compiled for ``sapphirerapids`` (one thread, same tuning budget, measured before denormals
    were flushed: :mod:`.fpenv`); ``emeraldrapids``, which LLVM gives the same features, is the name
    chosen."""
    fits = {name: isa for name, isa in cpus.items() if isa <= host}
    if not host or not fits:  # nothing known of the host: LLVM's guess
        return detected
    most = max(len(isa) for isa in fits.values())
    if detected in fits and len(fits[detected]) == most:
        return detected
    return min(name for name, isa in fits.items() if len(isa) == most)


@functools.cache
def host_llvm_cpu() -> str:
    """The LLVM CPU name a host target (``mcpu: auto``) compiles for: :func:`best_llvm_cpu` of LLVM's
    guess on x86, LLVM's guess elsewhere (imports TVM; the host does not change, so once a process)."""
    import tvm
    from tvm.target import codegen

    detected = codegen.llvm_get_system_cpu()
    if not codegen.llvm_get_system_triple().startswith(("x86_64", "i686", "i386")):
        return detected
    names = codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm", "mcpu": detected}))
    cpus = {str(n): _isa(codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": str(n)})))
            for n in names}
    return best_llvm_cpu(detected, host_isa(), cpus)


__all__ = ["SIMD_FLAGS", "X86_ISA", "best_llvm_cpu", "cpu_features", "cpu_model", "host_isa", "host_llvm_cpu"]
