"""Denormal fp32 values flushed to zero on the threads that run compiled kernels (x86: the MXCSR's FTZ and
DAZ bits, as PyTorch's ``torch.set_flush_denormal`` sets them).

An x86 core multiplies a denormal operand (magnitude below 1.2e-38) through a microcode assist about a
hundred times slower than a normal FMA. Kernels meet such values without any in the data: a vector that
LLVM widens past the end of a row (7 output pixels computed in 8 lanes) reads whatever lies beyond it,
and uninitialised stack memory read as fp32 is mostly denormal (small integers, the high halves of
pointers). The lane is discarded, but its FMAs still take the assist: EfficientNet-Lite0's 5x5
depthwise conv on 7x7 maps (1152 channels, one thread) ran 221 us with denormals honoured and 51 us
flushed, and how slow a kernel ran depended on the stack contents it happened to find, so tuning,
timing alone and timing in the model disagreed by up to 4x. Inference runtimes flush them for this
reason (TensorFlow around every op). Results change only where a value is itself denormal: none of a
quantized layer's (its scales are far above), and none of the models here.

The bits belong to a thread, a new thread starts with its creator's, and they change Python's own float
arithmetic on that thread too (Hypothesis, for one, refuses to run with subnormals flushed). So they are
set only while kernels run, and put back after (:func:`denormals_flushed`: every local measurement
session, every call of a loaded library); TVM's pool threads, started inside such a scope, keep them;
MetaSchedule's runner processes, which only time kernels, set them once (their initializer); so do the
benchmarks, a process of their own, where ONNX Runtime sessions are told to flush as well
(``session.set_denormal_as_zero``: created at its default, a session turns the flush off on the calling
thread). Not set: TVM's RPC servers (a board, or the loopback server of ``measure.timeout_s``), which
run kernels in processes of their own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_DENORMAL = 5e-324  # the smallest positive double


def flushed() -> bool:
    """Whether this thread takes a denormal operand as zero (DAZ)."""
    x = _DENORMAL  # a variable, not a literal: multiplied at run time, on this thread
    return x * 1.0 == 0.0


def flush_denormals() -> bool:
    """Flush denormal fp32/fp64 values to zero on this thread, and on threads it starts from now on, for
    good (a process that only runs kernels); False where the CPU cannot (not x86 with SSE3)."""
    import torch

    return bool(torch.set_flush_denormal(True))


@contextmanager
def denormals_flushed() -> Iterator[bool]:
    """Denormals flushed on this thread inside the block, as they were after it; yields whether they are."""
    import torch

    was = flushed()
    now = was or bool(torch.set_flush_denormal(True))
    try:
        yield now
    finally:
        if not was:
            torch.set_flush_denormal(False)


__all__ = ["denormals_flushed", "flush_denormals", "flushed"]
