"""Exact storage sizes of a layer's parameters, as the lowered kernels receive them."""

from __future__ import annotations

import math

from mpsearch.candidate import FLOAT_BITS, HALF_BITS, is_integer_bits

PACKED_MAX_BITS = 4  # weights of <= 4 bits are packed two per byte


def weight_mode(w_bits: int) -> str:
    """Storage of a layer's weights: ``f32``, ``f16`` (IEEE half), ``i8`` (int8 codes) or ``i4p`` (two
    codes per byte)."""
    if w_bits >= FLOAT_BITS:
        return "f32"
    if w_bits == HALF_BITS:
        return "f16"
    return "i4p" if w_bits <= PACKED_MAX_BITS else "i8"


def weight_storage_bytes(weight_shape: tuple[int, ...], w_bits: int, a_bits: int) -> int:
    """Bytes of weights, per-channel scale, bias and activation quantizer of one layer at ``(w_bits, a_bits)``."""
    out_ch = weight_shape[0]
    per_ch = math.prod(weight_shape[1:])
    mode = weight_mode(w_bits)
    bias = 4 * out_ch + (16 if is_integer_bits(a_bits) else 0)  # + (inv_scale, qmin, qmax, scale)
    if mode in ("f32", "f16"):
        return (4 if mode == "f32" else 2) * out_ch * per_ch + bias
    codes = out_ch * (per_ch if mode == "i8" else math.ceil(per_ch / 2))
    return codes + 4 * out_ch + bias  # one float32 scale per output channel
