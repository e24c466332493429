"""One layer kernel as a TVM PrimFunc (imports TVM: load lazily).

A layer kernel is a single PrimFunc: quantize the float input (``floor(x * inv_s + 0.5)``,
clipped, stored as uint8/int8), the convolution or matmul (int8 x int8 -> int32, packed int4
weights unpacked inside the kernel, or fp32), dequantize with a per-channel scale, add the bias and
the fused epilogue (ReLU, residual add). Scales are runtime tensors, so layers of equal shape share
one kernel, one tuning task and one measurement. :func:`make_kernel` picks the compute by the spec:
:mod:`.gemm` (one GEMM for a CUDA GPU's tensor cores), :mod:`.integer` (integer, fp32, weight-only),
:mod:`.fp16` (an fp16 operand), :mod:`.bitserial` (W2A2).
"""

from __future__ import annotations

from dataclasses import replace

from tvm import te, tirx

from mpsearch.hardware.kernels.bitserial import bitserial_compute
from mpsearch.hardware.kernels.fp16 import half_compute, uses_half
from mpsearch.hardware.kernels.gemm import gemm_compute
from mpsearch.hardware.kernels.integer import int_compute, zero_point_input
from mpsearch.hardware.kernels.spec import OPAQUE, KernelSpec


def layer_compute(spec: KernelSpec, tensors: list[te.Tensor]) -> te.Tensor:
    """The output tensor of the kernel of ``spec`` on ``tensors`` (placeholders in ``spec.inputs()`` order)."""
    t = dict(zip([name for name, _, _ in spec.inputs()], tensors))
    if spec.tensor_core:  # int8 / fp16 on a CUDA GPU's tensor cores: one GEMM (im2col for a conv)
        return gemm_compute(spec, t)
    if uses_half(spec):  # fp16 operand: fp32-accumulating float kernel
        if spec.a_mode == "z8":  # fp16.py quantizes u8/s8 only: give it the dequantized input as fp32
            t = {**t, "x": zero_point_input(spec, t["x"], t["qp"])[0]}
            spec = replace(spec, a_mode="f32")
        return half_compute(spec, t)
    if spec.bitserial:  # 2-bit weights and activations: popcounts over bit-planes (topi's bitpack)
        return bitserial_compute(spec, t)
    return int_compute(spec, t)


def make_kernel(spec: KernelSpec) -> tirx.PrimFunc:
    """The PrimFunc of one layer kernel, marked opaque so Relax fusion leaves it whole."""
    tensors = [te.placeholder(shape, dtype, name=name) for name, shape, dtype in spec.inputs()]
    out = layer_compute(spec, tensors)
    func = te.create_prim_func([*tensors, out])
    return func.without_attr("global_symbol").with_attr("op_pattern", OPAQUE)


__all__ = ["layer_compute", "make_kernel"]
