"""Tensor-expression kernels for one quantized layer each (imports TVM: load lazily).

One module per concern, in dependency order: :mod:`.spec` (what determines a kernel's code, no TVM),
:mod:`.epilogue` (dequantize, bias, ReLU / residual adds, shared by every kernel), :mod:`.integer`
(integer, fp32 and weight-only kernels), :mod:`.fp16` (an fp16 operand), :mod:`.gemm` (one GEMM for a
CUDA GPU's tensor cores, convolutions through im2col), :mod:`.bitserial` (W2A2
popcounts), :mod:`.packing` (weight arrays in the kernels' layouts), :mod:`.primfunc` (the PrimFunc of a
spec) and :mod:`.intrinsics` (mpsearch's int8 dot tensor intrinsics). The names below are the public ones.
"""

from mpsearch.hardware.kernels.intrinsics import (
    ARM_DOT4_INTRINSICS,
    AVX2_DOT_INTRINSICS,
    DOT4_INTRINSICS,
    DOT4_WORD_INTRINSICS,
    DOT_INTRINSICS,
    MMLA_INTRINSICS,
    SPLIT_DOT_INTRINSICS,
    dot16x2_intrinsics,
    dot_intrinsics_for,
    dot_isa,
    register_intrinsics,
)
from mpsearch.hardware.kernels.packing import pack_int4, pack_weight, unpack_int4
from mpsearch.hardware.kernels.primfunc import make_kernel
from mpsearch.hardware.kernels.spec import KGROUP, KOCT, KQUAD, LANES, OPAQUE, UNPACK_RULE, KernelSpec

__all__ = [
    "ARM_DOT4_INTRINSICS", "AVX2_DOT_INTRINSICS", "DOT4_INTRINSICS", "DOT4_WORD_INTRINSICS", "DOT_INTRINSICS",
    "KGROUP", "KOCT", "KQUAD", "KernelSpec", "LANES",
    "MMLA_INTRINSICS", "OPAQUE", "SPLIT_DOT_INTRINSICS", "UNPACK_RULE",
    "dot16x2_intrinsics", "dot_intrinsics_for", "dot_isa", "make_kernel", "pack_int4", "pack_weight",
    "register_intrinsics", "unpack_int4",
]
