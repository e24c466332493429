"""Exact storage sizes of a layer's parameters, as the lowered kernels receive them."""

from __future__ import annotations

import math

from mpsearch.candidate import FLOAT_BITS, HALF_BITS, is_integer_bits

PACKED_MAX_BITS = 4  # weights of <= 4 bits are packed two per byte
# ... and four per byte where their kernel takes the split layout (KernelSpec.split_codes: x86 GEMVs)
CRUMB_MAX_BITS = 2
BITSERIAL_MAX_BITS = 2  # weights and activations of <= 2 bits may run bit-serial (profile flag)
BITSERIAL_WORDS = (64, 32, 16, 8)  # bit-plane word widths, widest first


def weight_mode(w_bits: int) -> str:
    """Storage of a layer's weights: ``f32``, ``f16`` (IEEE half), ``i8`` (int8 codes) or ``i4p`` (two
    codes per byte)."""
    if w_bits >= FLOAT_BITS:
        return "f32"
    if w_bits == HALF_BITS:
        return "f16"
    return "i4p" if w_bits <= PACKED_MAX_BITS else "i8"


def bitserial_word_bits(reduce_dim: int) -> int:
    """Bits per word of a bit-serial bit-plane along a reduction of ``reduce_dim`` (input channels or K):
    the widest of 64/32/16/8 that divides it, else 8 with the last word zero-padded."""
    return next((w for w in BITSERIAL_WORDS if reduce_dim % w == 0), BITSERIAL_WORDS[-1])


def bitserial_weight_shape(weight_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Stored bit-plane layout of bit-serial weights (words of ``bitserial_word_bits`` bits): conv
    ``(O, words(C), kh, kw, planes)``, linear ``(O, planes, words(K))`` (what ``topi.nn.bitserial_*`` take)."""
    o, reduce_dim = weight_shape[0], weight_shape[1]
    words = math.ceil(reduce_dim / bitserial_word_bits(reduce_dim))
    if len(weight_shape) == 2:
        return (o, BITSERIAL_MAX_BITS, words)
    return (o, words, *weight_shape[2:], BITSERIAL_MAX_BITS)


def weight_storage_bytes(weight_shape: tuple[int, ...], w_bits: int, a_bits: int, bitserial: bool = False,
                         zero_point: bool = False) -> int:
    """Bytes of weights, per-channel scale, bias and activation quantizer of one layer at ``(w_bits, a_bits)``.

    ``bitserial``: the profile runs W2A2 layers bit-serial (``precisions.bitserial``), so such a layer
    stores two bit-planes of packed words (:func:`bitserial_weight_shape`) instead of packed int4.
    ``zero_point``: the layer's activations are asymmetric (``z8`` kernels), whose quantizer holds a fifth
    float, the zero point, and an int32 per output channel, the accumulator's ``-z·rowsum(w)``
    (:attr:`~mpsearch.hardware.kernels.KernelSpec.acc_offset`). A target whose dot takes shifted codes
    (``a_offset``: sdot, VNNI on s8, tensor cores) holds that int32 for other layers too: 4 bytes per
    output channel this does not count.
    """
    out_ch = weight_shape[0]
    per_ch = math.prod(weight_shape[1:])
    mode = weight_mode(w_bits)
    # + (inv_scale, qmin, qmax, scale[, zero point])
    bias = 4 * out_ch + ((20 if zero_point else 16) if is_integer_bits(a_bits) else 0)
    if zero_point and is_integer_bits(a_bits) and mode in ("i8", "i4p"):
        bias += 4 * out_ch  # the int32 accumulator offset
    if bitserial and w_bits <= BITSERIAL_MAX_BITS and a_bits <= BITSERIAL_MAX_BITS and not zero_point:
        word_bytes = bitserial_word_bits(weight_shape[1]) // 8
        return math.prod(bitserial_weight_shape(weight_shape)) * word_bytes + 4 * out_ch + bias
    if mode in ("f32", "f16"):
        return (4 if mode == "f32" else 2) * out_ch * per_ch + bias
    codes = out_ch * (per_ch if mode == "i8" else math.ceil(per_ch / 2))
    return codes + 4 * out_ch + bias  # one float32 scale per output channel
