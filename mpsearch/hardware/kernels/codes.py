"""Activation codes: the one quantizer every integer kernel applies to its input, and a producer's
epilogue to its output for an integer consumer; int4 weight codes out of a nibble (imports TVM: load
lazily)."""

from __future__ import annotations

from tvm import te, tirx


def quantize(x: tirx.PrimExpr, qp: te.Tensor, dtype: str, offset: int = 0, codes: bool = False) -> tirx.PrimExpr:
    """The activation code of ``x`` (``offset``: subtracted after clipping, :attr:`KernelSpec.a_offset`).
    ``codes``: ``x`` already is that code, clipped (:attr:`KernelSpec.codes_in`: the producer's epilogue
    quantized it, :func:`~.epilogue.requantize`), and only the offset is taken."""
    if codes:
        return (x.astype("int32") - offset if offset else x).astype(dtype)
    v = tirx.floor(x * qp[0] + 0.5)
    if int(qp.shape[0]) == 5:  # z8: unsigned codes around the zero point qp[4] (u8/s8 code unchanged)
        v = v + qp[4]
    v = te.max(te.min(v, qp[2]), qp[1])
    return (v - float(offset) if offset else v).astype(dtype)


def nibble_code(byte: tirx.PrimExpr, half: tirx.PrimExpr) -> tirx.PrimExpr:
    """The signed int4 code (int8) in nibble ``half`` (0: low, 1: high) of a uint8 ``byte`` that stores
    codes + 8. One expression for the kernels' compute and the dot intrinsic's description, which
    tensorize matches structurally."""
    return (tirx.bitwise_and(tirx.shift_right(byte.astype("int32"), half * 4), 15) - 8).astype("int8")


__all__ = ["nibble_code", "quantize"]
