"""fp16 layer kernels (imports TVM: load lazily).

Bit-width 16 is IEEE half precision. A kernel with a half operand (``w_mode`` or ``a_mode``
``"f16"``) computes like this:

- weights ``f16``: stored as float16 (2 bytes each; the weight-memory count says so);
- activations ``f16``: the fp32 input is cast to float16 inside the kernel (round to nearest even);
- multiply: both operands are widened to fp32 and multiplied there, then **accumulated in fp32**.
  The product of two halves (11-bit significands) is exact in fp32, so this is the same arithmetic
  as a widening fp16 multiply-accumulate (AArch64 ``FMLAL``, x86 ``vcvtph2ps`` + FMA); the
  accumulator never rounds to half, so long reductions do not lose precision;
- the output is fp32, like every layer kernel, so the cost table stays additive.

The other operand may be anything a layer kernel takes: fp32, integer weights (int8, or packed int4
unpacked here) dequantized with their per-channel scale, or integer activations quantized and
dequantized in the kernel. The PyTorch reference is ``mpsearch.quant.fake`` (``.half().float()``
round trips, computed in fp32): results agree to fp32 summation-order error.
"""

from __future__ import annotations

from tvm import te, tirx, topi

from mpsearch.hardware.kernels.epilogue import epilogue
from mpsearch.hardware.kernels.spec import KernelSpec

HALF = "f16"
INT_WEIGHTS = ("i8", "i4p")
INT_ACTS = ("u8", "s8")


def uses_half(spec: KernelSpec) -> bool:
    """Whether the kernel of ``spec`` has an fp16 operand (and is built by :func:`half_compute`)."""
    return HALF in (getattr(spec, "w_mode", None), getattr(spec, "a_mode", None))


def _input(spec: KernelSpec, t: dict[str, te.Tensor]) -> te.Tensor:
    x = t["x"]
    if spec.a_mode == HALF:
        return te.compute(x.shape, lambda *i: x(*i).astype("float16"), name="cast_x_f16")
    if spec.a_mode in INT_ACTS:  # integer activations against float weights: quantize, dequantize
        qp = t["qp"]
        dtype = "uint8" if spec.a_mode == "u8" else "int8"
        xq = te.compute(x.shape, lambda *i: te.max(te.min(tirx.floor(x(*i) * qp[0] + 0.5), qp[2]),
                                                    qp[1]).astype(dtype), name="quantize")
        return te.compute(xq.shape, lambda *i: xq(*i).astype("float32") * qp[3], name="dequantize_x")
    return x


def _weight(spec: KernelSpec, t: dict[str, te.Tensor]) -> te.Tensor:
    w = t["w"]
    if spec.w_mode not in INT_WEIGHTS:
        return w  # float16 or float32, widened by the reduction
    scale = t["scale"]
    if spec.w_mode == "i4p":  # two codes per byte, low nibble first, stored as code + 8 (packing.pack_int4)
        packed, inner = w, spec.w_shape[1:]

        def unpack(o: tirx.Var, *rest: tirx.Var) -> tirx.PrimExpr:
            idx = rest[0]
            for axis, extent in zip(rest[1:], inner[1:]):
                idx = idx * extent + axis
            byte = packed[o, tirx.floordiv(idx, 2)].astype("int32")
            return (tirx.bitwise_and(tirx.shift_right(byte, tirx.floormod(idx, 2) * 4), 15) - 8).astype("int8")

        w = te.compute(spec.w_shape, unpack, name="unpack_int4")
    codes = w
    return te.compute(spec.w_shape, lambda o, *r: codes(o, *r).astype("float32") * scale[o], name="dequantize_w")


def half_compute(spec: KernelSpec, t: dict[str, te.Tensor]) -> te.Tensor:
    """The output tensor of a kernel with an fp16 operand; ``t`` maps ``spec.inputs()`` names to
    placeholders. Accumulates in fp32, then bias and the fused epilogue (:mod:`.epilogue`)."""
    x, w = _input(spec, t), _weight(spec, t)
    if spec.op == "linear":
        r = te.reduce_axis((0, spec.w_shape[1]), name="k")
        acc = te.compute(spec.out_shape,
                         lambda n, o: te.sum(x[n, r].astype("float32") * w[o, r].astype("float32"), axis=r),
                         name="matmul_f32acc")
    elif spec.groups == 1:  # topi widens both operands to out_dtype before the multiply
        acc = topi.nn.conv2d_nchw(x, w, spec.stride, spec.pads, spec.dilation, out_dtype="float32")
    else:
        acc = topi.nn.group_conv2d_nchw(x, w, spec.stride, spec.pads, spec.dilation, spec.groups,
                                        out_dtype="float32")
    return epilogue(spec, t, acc)


__all__ = ["HALF", "half_compute", "uses_half"]
