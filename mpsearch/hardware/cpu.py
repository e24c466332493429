"""What CPU this is, read from ``/proc/cpuinfo`` (pure Python: no TVM), for peak-rate cache keys
(:mod:`.peaks`), device descriptions (:mod:`.tvm_backend`) and benchmark headers."""

from __future__ import annotations

import platform
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


__all__ = ["SIMD_FLAGS", "cpu_features", "cpu_model"]
