"""2-bit bit-serial layer kernels on TVM's bit-serial compute (imports TVM: load lazily).

A W2A2 layer (weights and activations both of at most 2 bits) may run bit-serial when the hardware
profile says so (``precisions.bitserial``); ``w_mode`` / ``a_mode`` ``"b2"`` in a :class:`KernelSpec`.

Arithmetic (exact, all in integers):

- activations are unsigned codes ``a = clip(floor(x * inv_s + 0.5), 0, 3)`` (after a ReLU), quantized
  inside the kernel, zero-filled to a whole number of words along the reduction (input channels or K),
  and split into bit-planes ``a = a0 + 2 a1`` by ``topi.nn.bitpack`` (also inside the kernel), in the
  layout ``topi.nn.bitserial_conv2d_nchw`` / ``bitserial_dense`` use;
- weights are signed symmetric codes ``w`` in ``[-1, 1]`` (2 bits, per-channel scale), stored as their
  two's-complement bit-planes ``w = s0 - 2 s1`` (``-1 = 0b11``), packed at prepare time
  (:func:`pack_bitserial`) in topi's pre-packed weight layout (conv ``(O, C/word, kh, kw, 2)``, linear
  ``(O, 2, K/word)``; element ``k`` of a word is bit ``word - 1 - k``, as ``bitpack`` packs);
- the reduction is topi's, ``sum_ij 2^(i+j) popcount(A_i & S_j)``, with the sign of the weights' top
  plane negated: ``sum(a * w) = sum_i 2^i (popcount(A_i & S0) - 2 popcount(A_i & S1))``. Padding and
  filler bits are zero on the activation side, so they add nothing. The int32 result goes through the
  shared epilogue (per-channel dequantize, bias, ReLU / residual adds: :mod:`.epilogue`).

Why not ``topi.nn.bitserial_*`` as is: its reduction has only non-negative plane weights, and its
``unipolar`` mode maps a weight bit to ``+-1``, which cannot represent the code 0 that symmetric 2-bit
weights need. Offset-binary weights (``u = w + 1``) with ``unipolar=False`` are exact once the window
sum of the activations is subtracted, but that correction is a second reduction feeding the epilogue,
and MetaSchedule's multi-level tiling then fails (TVM 0.27: ``reverse-compute-at`` ScheduleError, "all
the producer(s) ... present under the target loop"), so the kernel could not be tuned. The signed
top plane keeps one reduction block, as many popcounts as offset-binary, and no correction.

Layers that cannot run bit-serial keep the packed-int4 kernel (a documented fallback, see
:func:`bitserial_unsupported`): signed activations (they would need their own offset, and padding would
no longer be code 0), asymmetric (zero-point) activations, grouped convolutions and dilation.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
from tvm import te, tirx, topi

from mpsearch.errors import LoweringError
from mpsearch.hardware.kernels.epilogue import epilogue
from mpsearch.hardware.kernels.spec import KernelSpec
from mpsearch.hardware.memory import BITSERIAL_MAX_BITS, bitserial_word_bits

BITSERIAL = "b2"
PLANES = BITSERIAL_MAX_BITS  # bit-planes of the weights and of the activations
W_QMAX = 2 ** (BITSERIAL_MAX_BITS - 1) - 1  # qmax of symmetric 2-bit weights (codes -1..1)

log = logging.getLogger(__name__)


def bitserial_unsupported(op: str, groups: int = 1, dilation: tuple[int, int] = (1, 1),
                          signed_act: bool = False, zero_point: bool = False) -> str | None:
    """Why a layer cannot run bit-serial (it then keeps the packed-int4 kernel), or None if it can."""
    if signed_act:
        return "its input activations are signed (bit-serial needs unsigned codes, e.g. after a ReLU)"
    if zero_point:
        return "its input activations are asymmetric (a zero point would need its own correction and padding)"
    if op == "conv2d" and groups != 1:
        return f"it is a grouped convolution (groups={groups}; the bit-serial conv, like topi's, has no groups)"
    if op == "conv2d" and tuple(dilation) != (1, 1):
        return f"it is dilated (dilation={tuple(dilation)}; the bit-serial conv, like topi's, has no dilation)"
    if op not in ("conv2d", "linear"):
        return f"it is a {op} (bit-serial kernels are conv2d and linear only)"
    return None


def route(spec: KernelSpec, w_bits: int, act: object) -> KernelSpec:
    """``spec`` as a bit-serial kernel if the layer is W2A2 (``w_bits`` and the activation quantizer
    ``act``'s bits at most 2) and can run bit-serial; otherwise ``spec`` unchanged (W2A2 layers then
    keep the packed-int4 kernel, a documented fallback that is logged)."""
    if w_bits > BITSERIAL_MAX_BITS or act is None or act.half or act.bits > BITSERIAL_MAX_BITS:
        return spec
    why = bitserial_unsupported(spec.op, spec.groups, spec.dilation, signed_act=act.signed,
                                zero_point=bool(getattr(act, "zero_point", 0)))
    if why:
        log.debug("%s %s keeps the packed-int4 kernel: %s", spec.op, spec.w_shape, why)
        return spec
    return dataclasses.replace(spec, w_mode=BITSERIAL, a_mode=BITSERIAL)


def word_dtype(spec: KernelSpec) -> str:
    """The unsigned word type the bit-planes of ``spec`` are packed into."""
    return f"uint{bitserial_word_bits(spec.w_shape[1])}"


def check(spec: KernelSpec) -> None:
    """Raise :class:`LoweringError` (one line) if ``spec`` asks for a bit-serial kernel it cannot have."""
    if spec.a_mode != BITSERIAL or spec.w_mode != BITSERIAL:
        raise LoweringError(f"bit-serial kernels need w_mode and a_mode {BITSERIAL!r} (got {spec.w_mode!r}, "
                            f"{spec.a_mode!r}); use i4p weights with u8/s8 activations instead")
    why = bitserial_unsupported(spec.op, spec.groups, spec.dilation)
    if why:
        raise LoweringError(f"{spec.op} {spec.w_shape} cannot run bit-serial: {why}; "
                            "use the packed-int4 kernel (w_mode 'i4p', a_mode 'u8')")


def pack_bitserial(spec: KernelSpec, codes: np.ndarray) -> np.ndarray:
    """Signed 2-bit weight codes (logical ``(O, ...)`` layout) -> two's-complement bit-planes, packed into
    words in ``memory.bitserial_weight_shape`` (the layout ``topi.nn.bitserial_*`` takes for pre-packed weights)."""
    codes = np.asarray(codes).astype(np.int64)
    if codes.size and (codes.min() < -W_QMAX or codes.max() > W_QMAX):
        raise LoweringError(f"bit-serial weight codes must lie in [-{W_QMAX}, {W_QMAX}] (2-bit symmetric); "
                            f"got [{codes.min()}, {codes.max()}]: quantize the weights to 2 bits")
    word = bitserial_word_bits(spec.w_shape[1])
    o, reduce_dim = codes.shape[0], codes.shape[1]
    words = math.ceil(reduce_dim / word)
    u = codes & ((1 << PLANES) - 1)  # two's complement: -1 -> 0b11, the top plane weighs -2
    pad = [(0, 0)] * u.ndim
    pad[1] = (0, words * word - reduce_dim)
    u = np.pad(u, pad)  # filler bits meet zero activation bits: they add nothing
    u = u.reshape(o, words, word, *u.shape[2:])  # (O, words, word, [kh, kw])
    weights = (np.uint64(1) << np.arange(word - 1, -1, -1, dtype=np.uint64))  # element k -> bit word-1-k
    planes = []
    for b in range(PLANES):
        bits = ((u >> b) & 1).astype(np.uint64)
        shape = [1] * bits.ndim
        shape[2] = word
        planes.append((bits * weights.reshape(shape)).sum(axis=2, dtype=np.uint64))  # (O, words, [kh, kw])
    dtype = np.dtype(word_dtype(spec))
    if spec.op == "linear":
        return np.ascontiguousarray(np.stack(planes, axis=1).astype(dtype))  # (O, planes, words)
    return np.ascontiguousarray(np.stack(planes, axis=-1).astype(dtype))  # (O, words, kh, kw, planes)


def _plane_sum(pc: tirx.PrimExpr, b1: tirx.Var, b2: tirx.Var) -> tirx.PrimExpr:
    """``popcount * 2^(b1+b2)``, negated for the weights' two's-complement top plane."""
    v = pc.astype("int32") << (b1 + b2).astype("int32")
    return tirx.Select(b2 == PLANES - 1, -v, v)


def bitserial_compute(spec: KernelSpec, t: dict[str, te.Tensor]) -> te.Tensor:
    """The output tensor of a bit-serial kernel; ``t`` maps ``spec.inputs()`` names to placeholders."""
    check(spec)
    x, w, qp = t["x"], t["w"], t["qp"]
    pack = word_dtype(spec)
    word = bitserial_word_bits(spec.w_shape[1])
    reduce_dim = spec.w_shape[1]
    padded = math.ceil(reduce_dim / word) * word

    def code(*i: tirx.Var) -> tirx.PrimExpr:
        return te.max(te.min(tirx.floor(x(*i) * qp[0] + 0.5), qp[2]), qp[1]).astype("int32")

    def filled(*i: tirx.Var) -> tirx.PrimExpr:  # channels past the layer's are zero-filled to whole words
        return code(*i) if padded == reduce_dim else tirx.if_then_else(i[1] < reduce_dim, code(*i), 0)

    b1 = te.reduce_axis((0, PLANES), name="b1")
    b2 = te.reduce_axis((0, PLANES), name="b2")
    if spec.op == "linear":
        n = spec.x_shape[0]
        xq = te.compute((n, padded), filled, name="quantize")
        xp = topi.nn.bitpack(xq, PLANES, pack_axis=1, bit_axis=1, pack_type=pack)  # (N, planes, words)
        k = te.reduce_axis((0, padded // word), name="k")
        acc = te.compute(spec.out_shape, lambda i, o: te.sum(
            _plane_sum(tirx.popcount(xp[i, b1, k] & w[o, b2, k]), b1, b2), axis=[b2, b1, k]),
            name="bitserial_dense")
        return epilogue(spec, t, lambda i, o: acc[i, o])

    n, _, h, wd = spec.x_shape
    xq = te.compute((n, padded, h, wd), filled, name="quantize")
    xp = topi.nn.bitpack(xq, PLANES, pack_axis=1, bit_axis=2, pack_type=pack)  # (N, words, planes, H, W)
    (top, left, bottom, right), (sh, sw) = spec.pads, spec.stride
    if top or left or bottom or right:
        xp = topi.nn.pad(xp, [0, 0, 0, top, left], [0, 0, 0, bottom, right], name="pad_temp")
    _, _, kh, kwid = spec.w_shape
    rc = te.reduce_axis((0, padded // word), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kwid), name="rx")
    acc = te.compute(spec.out_shape, lambda i, o, y, xx: te.sum(
        _plane_sum(tirx.popcount(xp[i, rc, b1, y * sh + ry, xx * sw + rx] & w[o, rc, ry, rx, b2]), b1, b2),
        axis=[rc, ry, rx, b2, b1]), name="bitserial_conv2d")
    return epilogue(spec, t, lambda i, o, y, xx: acc[i, o, y, xx])


__all__ = ["BITSERIAL", "PLANES", "W_QMAX", "bitserial_compute", "bitserial_unsupported", "check", "pack_bitserial", "route",
           "word_dtype"]
