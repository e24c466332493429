"""Weight arrays in the layouts the kernels take: int4 two per byte, int8 blocked into dot tiles (an
x86 int4 / int2 GEMV's two / four tiles in one: :attr:`KernelSpec.split_codes`), 2-bit bit-planes
(numpy only)."""

from __future__ import annotations

import math

import numpy as np

from mpsearch.hardware.kernels.bitserial import pack_bitserial
from mpsearch.hardware.kernels.spec import KGROUP, LANES, KernelSpec

def pack_int4(codes: np.ndarray) -> np.ndarray:
    """Pack signed 4-bit codes (O, ...) two per byte: low nibble = even index, stored as code + 8."""
    flat = codes.reshape(codes.shape[0], -1).astype(np.int16) + 8
    if flat.shape[1] % 2:
        flat = np.pad(flat, ((0, 0), (0, 1)), constant_values=8)
    return (flat[:, 0::2] | (flat[:, 1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`pack_int4`."""
    lo = (packed & 15).astype(np.int16) - 8
    hi = (packed >> 4).astype(np.int16) - 8
    flat = np.stack([lo, hi], axis=2).reshape(packed.shape[0], -1)[:, : math.prod(shape[1:])]
    return flat.reshape(shape).astype(np.int8)


def pack_weight(spec: KernelSpec, codes: np.ndarray) -> np.ndarray:
    """The weight array the kernel of ``spec`` takes, from integer codes in the logical (O, ...) layout:
    int4 packed two per byte, int8 blocked into dot tiles when ``spec.packed`` (same bytes, reordered),
    2-bit codes as two's-complement bit-planes when ``spec.bitserial``; fp32 weights (``codes`` then the
    float weights) blocked by 16 output channels when ``spec.float_blocked``."""
    if spec.bitserial:
        return pack_bitserial(spec, codes)
    if spec.float_blocked:  # fp32 weights, [O/16, C, kh, kw, 16]
        o = spec.o_tiles * LANES
        w = np.pad(codes, [(0, o - codes.shape[0])] + [(0, 0)] * (codes.ndim - 1)).astype(np.float32)
        w = w.reshape(o // LANES, LANES, *w.shape[1:])
        return np.ascontiguousarray(np.moveaxis(w, 1, -1))
    if not spec.packed:
        return pack_int4(codes) if spec.w_mode == "i4p" else codes.astype(np.int8)
    g, o, k = spec.kgroup, spec.o_tiles * LANES, spec.k_padded
    codes = codes.reshape(spec.w_shape)
    pad = [(0, o - codes.shape[0]), (0, k - codes.shape[1])] + [(0, 0)] * (codes.ndim - 2)
    codes = np.pad(codes, pad) if any(p for _, p in pad) else codes  # zero weights: padded lanes / inputs
    if spec.op == "linear":
        tiles = codes.reshape(o // LANES, LANES, k // g, g).transpose(0, 2, 1, 3)
    else:
        _, _, kh, kw = spec.w_shape
        tiles = codes.reshape(o // LANES, LANES, k // g, g, kh, kw).transpose(0, 2, 4, 5, 1, 3)
    if spec.split_codes:  # tiles cj + h in bit field h of one byte tile (the low field first), codes + 2**(bits-1)
        c = spec.split_codes
        bits = 8 // c
        tiles = tiles.astype(np.int16).reshape(tiles.shape[0], -1, c, *tiles.shape[2:]) + (1 << (bits - 1))
        fields = [tiles[:, :, h] << (bits * h) for h in range(c)]
        return np.ascontiguousarray(np.bitwise_or.reduce(fields).astype(np.uint8))
    if spec.w_mode == "i4p":  # code pairs of one lane in one byte: low nibble first, stored as code + 8
        tiles = tiles.astype(np.int16) + 8
        pairs = (tiles[..., 0::2] | (tiles[..., 1::2] << 4)).astype(np.uint8)
        return np.ascontiguousarray(pairs[..., 0] if g == KGROUP else pairs)
    return np.ascontiguousarray(tiles.astype(np.int8))


__all__ = ["pack_int4", "pack_weight", "unpack_int4"]
