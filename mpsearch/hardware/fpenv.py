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

The bits belong to a thread and a new thread starts with its creator's: they are set on the thread that
starts TVM's pool before it starts it (:func:`mpsearch.hardware.export_lib.use_threads`, the backend,
:mod:`mpsearch.deploy`), in MetaSchedule's runner processes (their initializer), and again before each
measurement and each call of a loaded library, as other libraries reset them: creating an ONNX Runtime
session turns them off on the calling thread unless its ``session.set_denormal_as_zero`` is set. Not
set: TVM's RPC servers (a board, or the loopback server of ``measure.timeout_s``), which run kernels
in processes of their own."""

from __future__ import annotations


def flush_denormals() -> bool:
    """Flush denormal fp32 values to zero on this thread (and threads it starts from now on); False
    where the CPU cannot (not x86 with SSE3)."""
    import torch

    return bool(torch.set_flush_denormal(True))


__all__ = ["flush_denormals"]
