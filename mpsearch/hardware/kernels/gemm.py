"""Layer kernels as one GEMM for a CUDA GPU's tensor cores (imports TVM: load lazily).

:attr:`KernelSpec.tensor_core` kernels: the input rows ``A`` (M x K) against the weight rows ``W``
(O x K), ``acc[m, o] = sum_k A[m, k] · W[o, k]``, the shape TVM's tensor-core rule maps onto its
wmma m16n16k16 intrinsics (``wmma_sync_16x16x16_s8s8s32`` / ``..._f16f16f32``, B transposed or not as
the rule lays it out; ``cuda_schedule.py``). A linear layer is that
GEMM as it is (M = batch). A conv is lowered through im2col: row ``m`` is output pixel ``(b, y, x)``,
column ``k`` input tap ``(c, ry, rx)``, the order of the weights' ``(O, C, kh, kw)`` layout, so the
weights stay in their plain layout and the rows are gathered from the input with the padding,
stride and dilation in the index (an implicit GEMM once MetaSchedule inlines the gather into the
shared-memory copy). TVM 0.27 does not lower its wmma tiling of topi's NCHW conv
(``tvm_access_ptr element type must match the source buffer``); the GEMM form lowers.

Arithmetic, the same as the other kernels':

- integer: the activation codes are quantized into int8 (8-bit uint8 codes shifted by -128,
  :attr:`KernelSpec.a_offset`, the int32 accumulator gets ``128 · rowsum(w)`` back, :attr:`KernelSpec.acc_offset`), int4 weights
  unpacked to int8, and int8 x int8 products summed in int32: exact, so the output is bit-identical to
  the host build of the same kernel;
- fp16: the input cast to half, half weights, products summed in fp32 (the wmma ``f32`` accumulator);
  int8 / int4 weight codes against half activations (weight-only quantization with fp16 compute) go
  into the mma as halves, which hold every code exactly, and their per-channel scale multiplies the
  fp32 sum: ``sum(x · q) · s`` is ``sum(x · q·s)`` up to fp32 rounding, where dequantizing into half
  weights first would round ``q·s`` to 11 bits.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import te, tirx

from mpsearch.hardware.kernels.epilogue import epilogue
from mpsearch.hardware.kernels.codes import quantize
from mpsearch.hardware.kernels.integer import unpack_plain
from mpsearch.hardware.kernels.spec import UNPACK_RULE, KernelSpec

#: the name of the GEMM block, by which ``cuda_schedule.space_generator`` gives it the tensor-core rules
GEMM_BLOCK = "tensor_core_gemm"


def im2col(spec: KernelSpec, value: Callable[..., tirx.PrimExpr], border: tirx.PrimExpr, name: str) -> te.Tensor:
    """The GEMM's input rows (M x K): ``value(b, c, i, j)`` of the unpadded input (a linear layer's
    ``value(b, k)``), ``border`` in a conv's zero padding."""
    if spec.op == "linear":
        return te.compute(spec.x_shape, value, name=name)
    n, c, h, wd = spec.x_shape
    (ph, pw), (sh, sw), (dh, dw) = spec.padding, spec.stride, spec.dilation
    _, _, kh, kw = spec.w_shape
    _, _, oh, ow = spec.out_shape

    def row(m: tirx.Var, k: tirx.Var) -> tirx.PrimExpr:
        b, y, xx = tirx.floordiv(m, oh * ow), tirx.floormod(tirx.floordiv(m, ow), oh), tirx.floormod(m, ow)
        ch, ry, rx = tirx.floordiv(k, kh * kw), tirx.floormod(tirx.floordiv(k, kw), kh), tirx.floormod(k, kw)
        i, j = y * sh + ry * dh - ph, xx * sw + rx * dw - pw
        if not any(spec.pads):
            return value(b, ch, i, j)
        return tirx.if_then_else(tirx.all(i >= 0, i < h, j >= 0, j < wd), value(b, ch, i, j), border)

    return te.compute((n * oh * ow, c * kh * kw), row, name=name)


def weight_rows(spec: KernelSpec, w: te.Tensor) -> te.Tensor:
    """The weights as the GEMM's O x K rows (a conv's ``(O, C, kh, kw)`` read flat: no copy once inlined)."""
    if spec.op == "linear":
        return w
    kh, kw = spec.w_shape[2:]
    return te.compute((spec.w_shape[0], spec.k), lambda o, k: w[o, tirx.floordiv(k, kh * kw),
                                                               tirx.floormod(tirx.floordiv(k, kw), kh),
                                                               tirx.floormod(k, kw)], name="weight_rows")


def gemm_compute(spec: KernelSpec, t: dict[str, te.Tensor]) -> te.Tensor:
    """The output tensor of a tensor-core kernel; ``t`` maps ``spec.inputs()`` names to placeholders."""
    x = t["x"]
    if spec.integer:
        qp, off = t["qp"], spec.a_offset
        zero = (qp[4] - float(off)).astype("int8") if spec.a_mode == "z8" else tirx.const(-off, "int8")
        rows = im2col(spec, lambda *i: quantize(x(*i), qp, "int8", off, spec.codes_in), zero, "quantize")
        # int4: unpacked once per call into an int8 buffer of its own (UNPACK_RULE): inlined into the
        # GEMM's shared-memory copy, no sample of the tensor-core space lowers
        w = unpack_plain(spec, t["w"], {"schedule_rule": UNPACK_RULE}) if spec.w_mode == "i4p" else t["w"]
        acc_dtype = "int32"
    else:
        rows = im2col(spec, lambda *i: x(*i).astype("float16"), tirx.const(0.0, "float16"), "cast_x_f16")
        w, acc_dtype = t["w"], "float32"
        if spec.w_mode == "i4p":
            w = unpack_plain(spec, w, {"schedule_rule": UNPACK_RULE})
        if spec.w_mode != "f16":  # weight-only codes as halves (exact); the scale comes after the sum
            codes = w
            w = te.compute(spec.w_shape, lambda *i: codes(*i).astype("float16"), name="codes_f16")
    w = weight_rows(spec, w)
    r = te.reduce_axis((0, spec.k), name="k")
    acc = te.compute((rows.shape[0], spec.w_shape[0]),
                     lambda m, o: te.sum(rows[m, r].astype(acc_dtype) * w[o, r].astype(acc_dtype), axis=r),
                     name=GEMM_BLOCK)
    scaled = not spec.integer and "scale" in t  # weight-only: the epilogue scales integer kernels only

    def acc_at(m: tirx.PrimExpr, o: tirx.PrimExpr) -> tirx.PrimExpr:
        return acc[m, o] * t["scale"][o] if scaled else acc[m, o]

    if spec.op == "linear":
        return epilogue(spec, t, acc_at)
    _, _, oh, ow = spec.out_shape
    return epilogue(spec, t, lambda b, o, y, xx: acc_at((b * oh + y) * ow + xx, o))


__all__ = ["GEMM_BLOCK", "gemm_compute", "im2col", "weight_rows"]
