"""Activation codes: the one quantizer every integer kernel applies to its input, and a producer's
epilogue to its output for an integer consumer; int4 / int2 weight codes out of a byte's bit field
(imports TVM: load lazily)."""

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


def field_code(byte: tirx.PrimExpr, field: tirx.PrimExpr, bits: int) -> tirx.PrimExpr:
    """The signed ``bits``-bit code (int8) in bit field ``field`` (0: the lowest ``bits`` bits) of a uint8
    ``byte`` that stores codes + ``2**(bits - 1)``: int4 nibbles (``bits`` 4) or 2-bit fields (2). One
    expression for the kernels' compute and the dot intrinsic's description, which tensorize matches
    structurally."""
    fields = tirx.bitwise_and(tirx.shift_right(byte.astype("int32"), field * bits), (1 << bits) - 1)
    return (fields - (1 << (bits - 1))).astype("int8")


__all__ = ["field_code", "quantize"]
