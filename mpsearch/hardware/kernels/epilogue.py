"""The end every layer kernel shares: dequantize, bias, then the fused elementwise chain that followed
the layer in the model (ReLU, clamps such as ReLU6, SiLU, hardswish, sigmoid, residual adds), so that
none of them is another pass over the float activation (imports TVM)."""

from __future__ import annotations

from collections.abc import Callable

from tvm import te, tirx

from mpsearch.hardware.kernels.codes import quantize
from mpsearch.hardware.kernels.spec import KernelSpec, clamp_bounds


def _apply(op: str, v: tirx.PrimExpr, residual: Callable[[], tirx.PrimExpr]) -> tirx.PrimExpr:
    f32 = "float32"
    if op == "relu":
        return te.max(v, tirx.const(0.0, f32))
    if op == "add":
        return v + residual()
    if op == "silu":
        return v * tirx.sigmoid(v)
    if op == "sigmoid":
        return tirx.sigmoid(v)
    if op == "hardswish":  # x * relu6(x + 3) / 6, as torch computes it
        return v * te.min(te.max(v + tirx.const(3.0, f32), tirx.const(0.0, f32)), tirx.const(6.0, f32)) \
            / tirx.const(6.0, f32)
    lo, hi = clamp_bounds(op)
    if lo is not None:
        v = te.max(v, tirx.const(lo, f32))
    if hi is not None:
        v = te.min(v, tirx.const(hi, f32))
    return v


def requantize(v: tirx.PrimExpr, qp_out: te.Tensor, codes: str) -> tirx.PrimExpr:
    """The consumer's activation code of the fp32 value ``v`` (:attr:`KernelSpec.codes_out`): what its own
    input staging computes from that value, ``clip(floor(v * inv_scale + 0.5))``, as uint8 (``u8``) or int8."""
    return quantize(v, qp_out, "uint8" if codes == "u8" else "int8")


def epilogue(spec: KernelSpec, t: dict[str, te.Tensor], acc_at: Callable[..., tirx.PrimExpr]) -> te.Tensor:
    """Add the int32 ``offset`` (:attr:`KernelSpec.acc_offset`), dequantize (integer kernels), add the bias,
    then the fused ops of ``spec.epilogue`` in order; where :attr:`KernelSpec.codes_out`, quantize for the
    consumer (:func:`requantize`)."""
    residuals = [t[f"res{i}"] for i, e in enumerate(spec.epilogue) if e == "add"]

    def value(*i: tirx.Var) -> tirx.PrimExpr:
        v = acc_at(*i)
        if spec.acc_offset:  # int32, added exactly to an int32 or (depthwise_in_float) an fp32 sum of integers
            offset = t["offset"][i[1]]
            v = v + (offset.astype("float32") if spec.depthwise_in_float else offset)
        v = v.astype("float32")
        if spec.integer:
            v = v * t["scale"][i[1]]
        v = v + t["bias"][i[1]]
        res = iter(residuals)
        for op in spec.epilogue:
            v = _apply(op, v, lambda: next(res)(*i))
        return requantize(v, t["qp_out"], spec.codes_out) if spec.codes_out else v

    return te.compute(spec.out_shape, value, name="epilogue")


__all__ = ["epilogue", "requantize"]
