"""Integer layer kernels (imports TVM: load lazily): quantize the float input in the kernel, then an
int8 x int8 -> int32 convolution / matmul (packed int4 weights unpacked in the kernel; the blocked dot of
:attr:`KernelSpec.packed`), dequantize and the shared epilogue. The same code with a float accumulator
builds the fp32 and weight-only kernels; on x86 hosts (AVX2 or AVX-512) fp32 convs and linear layers take a blocked
layout of their own (:func:`float_blocked_conv`) and fp32 depthwise convs the phase-split input of
:func:`depthwise_dot`.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import te, tirx, topi

from mpsearch.hardware.kernels.codes import field_code, quantize
from mpsearch.hardware.kernels.epilogue import epilogue
from mpsearch.hardware.kernels.spec import (
    ARM_DOT_ISAS,
    INT_WEIGHT_MODES,
    KGROUP,
    KOCT,
    KQUAD,
    LANES,
    UNPACK_RULE,
    KernelSpec,
)


def zero_point_input(spec: KernelSpec, x: te.Tensor, qp: te.Tensor) -> tuple[te.Tensor, tuple[int, ...]]:
    """The z8 input of a plain-layout kernel and the padding (top, left, bottom, right) left for the conv. Against integer weights:
    uint8 codes, a conv's padding filled here with the code of 0.0 (the zero point ``qp[4]``, not code 0),
    so that the accumulator offset ``-z·rowsum(w)`` (:attr:`KernelSpec.acc_offset`) holds at the borders too. Against float weights: dequantized,
    ``(q - z) · scale``, whose zero padding is then exact."""
    if spec.w_mode not in INT_WEIGHT_MODES:
        xq = te.compute(x.shape, lambda *i: quantize(x(*i), qp, "uint8", codes=spec.codes_in), name="quantize")
        return te.compute(xq.shape, lambda *i: (xq(*i).astype("float32") - qp[4]) * qp[3],
                          name="dequantize_x"), spec.pads
    if spec.op == "linear" or not any(spec.pads):
        return te.compute(x.shape, lambda *i: quantize(x(*i), qp, "uint8", codes=spec.codes_in),
                          name="quantize"), spec.pads
    n, c, h, wd = spec.x_shape
    ph, pw = spec.padding

    def quantize_pad(b: tirx.Var, ch: tirx.Var, i: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        inside = tirx.all(i >= ph, i < h + ph, j >= pw, j < wd + pw)
        code = quantize(x[b, ch, i - ph, j - pw], qp, "uint8", codes=spec.codes_in)
        return tirx.if_then_else(inside, code, qp[4].astype("uint8"))

    return te.compute((n, c, *spec.padded_hw), quantize_pad, name="quantize"), (0, 0, 0, 0)


def clamped_read(i: tirx.PrimExpr, j: tirx.PrimExpr, h: int, w: int) -> tuple[tirx.PrimExpr, tirx.PrimExpr]:
    """``(inside, row)`` for reading element ``(i, j)`` of an ``h x w`` plane that may lie outside it
    (a padded input): whether it is inside, and the row clamped into the plane. The padded input is then
    ``Select(inside, x[.., row, j], border)``: a select of a read, not a branch, so that a row
    vectorizes into contiguous loads, borders included.

    The condition tests the clamped row against the unclamped one: TVM simplifies a select's value under
    its condition, and a bounds test on the row would let it drop the clamp, the vector loads of a
    border row then reading a whole row before (after) the input. The column is not clamped (a clamped
    column is a gather: 0.4 ns an element): a border column reads the previous (next) row's last
    (first) elements, and only the first (last) row of the whole input reads up to ``pw`` elements
    before (after) it, never used."""
    row = te.max(te.min(i, h - 1), 0)
    return tirx.all(row == i, j >= 0, j < w), row


def word_byte(word: tirx.PrimExpr, k: tirx.PrimExpr) -> tirx.PrimExpr:
    """Byte ``k`` of a uint32 word of four codes (:attr:`KernelSpec.word_input`), as int32: what the
    word dot intrinsics' description reads (:data:`~.intrinsics.DOT4_WORD_INTRINSICS`)."""
    return tirx.bitwise_and(tirx.shift_right(word, (k * 8).astype("uint32")),
                            tirx.const(255, "uint32")).astype("int32")


def quantize_words(spec: KernelSpec, x: te.Tensor, qp: te.Tensor) -> te.Tensor:
    """The padded input of a blocked x86 16x4 conv as uint32 words of four codes
    (:attr:`KernelSpec.word_input`): ``[n, C/4, rows, cols]``, channel ``4c + k``'s code in byte ``k``.
    Each word is the or of four shifted codes, each read from its channel's NCHW row at the same column,
    so a row of words vectorizes into four contiguous loads; the border is a select of a read
    (:func:`clamped_read`), not a branch. Borders and padded input channels hold the code of 0.0 (shifted by
    :attr:`KernelSpec.a_offset`), as :func:`packed_dot`'s byte layout does."""
    n, c, h, wd = spec.x_shape
    ph, pw = spec.padding
    off = spec.a_offset
    value = "int32" if spec.codes_in else "float32"
    zero = tirx.const(-off, value)

    def word(b: tirx.Var, c2: tirx.Var, i: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        inside, row = clamped_read(i - ph, j - pw, h, wd)
        col = j - pw
        packed = None
        for k in range(KQUAD):
            ch = c2 * KQUAD + k
            ok = tirx.all(inside, ch < c) if spec.k_padded != c else inside
            v = quantize(x[b, te.min(ch, c - 1), row, col], qp, value, off, spec.codes_in)
            code = tirx.Select(ok, v, zero).astype("uint32")
            code = code if k == 0 else tirx.shift_left(code, tirx.const(8 * k, "uint32"))
            packed = code if packed is None else tirx.bitwise_or(packed, code)
        return packed

    return te.compute((n, spec.k_padded // KQUAD, *spec.padded_hw), word, name="quantize")


def conv_input_codes(spec: KernelSpec, x: te.Tensor, qp: te.Tensor) -> te.Tensor:
    """The input of a blocked integer conv (:attr:`KernelSpec.packed`) staged for its dot: quantized and
    zero-padded into channel groups of ``spec.kgroup``, as uint32 words of four codes
    (:func:`quantize_words`, :attr:`KernelSpec.word_input`) or as bytes ``[n, C/g, rows, cols, g]``. The
    one pass over the fp32 input every such kernel makes before its dot (``benchmarks/roofline.py``
    times it alone)."""
    if spec.word_input:
        return quantize_words(spec, x, qp)
    off, g, kp = spec.a_offset, spec.kgroup, spec.k_padded
    dtype = _code_dtype(spec)
    own = {"schedule_rule": UNPACK_RULE} if spec.dot_isa in ARM_DOT_ISAS else None  # see packed_dot
    n, c, h, wd = spec.x_shape
    ph, pw = spec.padding

    def quantize_pad(b: tirx.Var, c2: tirx.Var, i: tirx.Var, j: tirx.Var, ci: tirx.Var) -> tirx.PrimExpr:
        inside = tirx.all(i >= ph, i < h + ph, j >= pw, j < wd + pw)
        if kp != c:  # padded input channels (zero weights) read as the border code
            inside = tirx.all(inside, c2 * g + ci < c)
        v = quantize(x[b, c2 * g + ci, i - ph, j - pw], qp, dtype, off, spec.codes_in)
        # z8: the border is the code of 0.0, the zero point (the accumulator offset -z·rowsum(w) counts it);
        # shifted codes (a_offset): the code of 0.0 shifted too
        zero = (qp[4] - float(off)).astype(dtype) if spec.a_mode == "z8" else tirx.const(-off, dtype)
        return tirx.if_then_else(inside, v, zero)

    return te.compute((n, kp // g, *spec.padded_hw, g), quantize_pad, name="quantize", attrs=own)


def _code_dtype(spec: KernelSpec) -> str:
    """The dtype of a packed kernel's activation codes: u8 / z8 codes as they are, or s8 ones shifted up
    (VNNI); u8 shifted down (sdot, tensor cores), s8: int8."""
    off = spec.a_offset
    return "uint8" if (spec.a_mode in ("u8", "z8") and not off) or off < 0 else "int8"


def packed_dot(spec: KernelSpec, x: te.Tensor, w: te.Tensor, qp: te.Tensor) -> tuple[te.Tensor, Callable[..., tirx.PrimExpr]]:
    """Quantize the input into channel groups of ``spec.kgroup`` (2, 4 or 8) and reduce against the
    blocked weights; the int32 accumulator has the 16 output lanes innermost. Returns it and
    ``(n, o, ...) -> acc value``."""
    off = spec.a_offset
    dtype = _code_dtype(spec)
    # On ARM the quantized input stays a block of its own (UNPACK_RULE's custom rule): MetaSchedule's
    # AutoInline would fold it into the dot, whose reads then no longer match any dot intrinsic, and
    # RewriteTensorize leaves such a sketch untensorized with only a warning. (x86 kernels keep their
    # code of before, so their tuning records stay valid.)
    own = {"schedule_rule": UNPACK_RULE} if spec.dot_isa in ARM_DOT_ISAS else None
    g = spec.kgroup  # g == 2 builds exactly the 16x2 dot's code of before: its tuning records stay valid
    if spec.w_mode == "i4p" and not spec.split_codes:  # unpacked next to the dot (MetaSchedule: per tile)
        packed = w

        def unpack(*i: tirx.Var) -> tirx.PrimExpr:
            if g > KGROUP:  # a lane's quad (octet) in two (four) bytes
                byte = packed(*i[:-1], tirx.floordiv(i[-1], 2)).astype("int32")
                nibble = tirx.bitwise_and(tirx.shift_right(byte, tirx.floormod(i[-1], 2) * 4), 15)
                return (nibble - 8).astype("int8")
            byte = packed(*i[:-1]).astype("int32")
            return (tirx.bitwise_and(tirx.shift_right(byte, i[-1] * 4), 15) - 8).astype("int8")

        # Its own schedule rule (tvm_backend) keeps it from being inlined into the dot, which would
        # block tensorizing: the weights are unpacked once per call, then go through the int8 dot.
        w = te.compute(spec.dot_tile_shape(), unpack, name="unpack_int4", attrs={"schedule_rule": UNPACK_RULE})
    tiles, kp = spec.o_tiles, spec.k_padded
    if spec.op == "linear":
        n, k = spec.x_shape

        def code(b: tirx.Var, kk: tirx.PrimExpr) -> tirx.PrimExpr:  # padded inputs: code 0, zero weights
            v = quantize(x[b, kk], qp, dtype, off, spec.codes_in)
            return v if kp == k else tirx.if_then_else(kk < k, v, tirx.const(0, dtype))

        if spec.split_codes:  # each byte tile c tiles of codes: c x 4 inputs per step, one bit field each
            c, bits = spec.split_codes, 8 // spec.split_codes
            xq = te.compute((n, kp // (c * g), c * g), lambda b, k2, ki: code(b, k2 * c * g + ki), name="quantize")
            k2 = te.reduce_axis((0, kp // (c * g)), name="k2")
            half = te.reduce_axis((0, c), name="half")
            ki = te.reduce_axis((0, g), name="ki")
            acc = te.compute(
                (n, tiles, LANES),
                lambda b, oc, oi: te.sum(xq[b, k2, half * g + ki].astype("int32")
                                         * field_code(w[oc, k2, oi, ki], half, bits).astype("int32"),
                                         axis=[k2, half, ki]),
                name="dot")
            return acc, lambda b, o: acc[b, tirx.floordiv(o, LANES), tirx.floormod(o, LANES)]
        k2 = te.reduce_axis((0, kp // g), name="k2")
        ki = te.reduce_axis((0, g), name="ki")
        if g == KOCT:  # smmla pairs two batch rows: next to the lanes in the output ([O/16, N, 16]) and
            # next to their 8 inputs in the quantized input ([K/8, N, 8]: one 16-byte operand)
            xq = te.compute((kp // g, n, g), lambda k2, b, ki: code(b, k2 * g + ki), name="quantize", attrs=own)
            acc = te.compute(
                (tiles, n, LANES),
                lambda oc, b, oi: te.sum(xq[k2, b, ki].astype("int32") * w[oc, k2, oi, ki].astype("int32"),
                                         axis=[k2, ki]),
                name="dot")
            return acc, lambda b, o: acc[tirx.floordiv(o, LANES), b, tirx.floormod(o, LANES)]
        xq = te.compute((n, kp // g, g), lambda b, k2, ki: code(b, k2 * g + ki), name="quantize", attrs=own)
        acc = te.compute(
            (n, tiles, LANES),
            lambda b, oc, oi: te.sum(xq[b, k2, ki].astype("int32") * w[oc, k2, oi, ki].astype("int32"),
                                     axis=[k2, ki]),
            name="dot")
        return acc, lambda b, o: acc[b, tirx.floordiv(o, LANES), tirx.floormod(o, LANES)]
    n = spec.x_shape[0]
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    _, _, kh, kw = spec.w_shape
    c2 = te.reduce_axis((0, kp // g), name="c2")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    ci = te.reduce_axis((0, g), name="ci")
    _, _, oh, ow = spec.out_shape
    xq = conv_input_codes(spec, x, qp)
    if spec.word_input:
        code_at = lambda b, c, i, j, k: word_byte(xq[b, c, i, j], k)  # noqa: E731
    else:
        code_at = lambda b, c, i, j, k: xq[b, c, i, j, k].astype("int32")  # noqa: E731
    acc = te.compute(
        (n, tiles, oh, ow, LANES),
        lambda b, oc, y, xx, oi: te.sum(
            code_at(b, c2, y * sh + ry * dh, xx * sw + rx * dw, ci)
            * w[oc, c2, ry, rx, oi, ci].astype("int32"), axis=[c2, ry, rx, ci]),
        name="dot")
    return acc, blocked_reader(spec, acc)


def blocked_reader(spec: KernelSpec, acc: te.Tensor) -> Callable[..., tirx.PrimExpr]:
    """``(n, o, y, x) -> value`` of a conv's blocked accumulator ``(n, O/16, oh, ow, 16)``: read through
    an ``unblock`` stage ``(n, O/16, oh, 16, ow)`` (each output row's 16 channels of a block as rows of
    pixels) where :attr:`KernelSpec.unblock`."""
    if not spec.unblock:
        return lambda b, o, y, xx: acc[b, tirx.floordiv(o, LANES), y, xx, tirx.floormod(o, LANES)]
    n, tiles, oh, ow, _ = (int(d) for d in acc.shape)
    rows = te.compute((n, tiles, oh, LANES, ow), lambda b, t, y, i, xx: acc[b, t, y, xx, i], name="unblock")
    return lambda b, o, y, xx: rows[b, tirx.floordiv(o, LANES), y, tirx.floormod(o, LANES), xx]


def unpack_plain(spec: KernelSpec, packed: te.Tensor, attrs: dict[str, str] | None = None) -> te.Tensor:
    """int4 weight codes of the plain layout (two per byte, :func:`~.packing.pack_int4`) as int8 ``w_shape``
    (``attrs``: the block's annotations, e.g. its own schedule rule)."""
    inner = spec.w_shape[1:]

    def unpack(o: tirx.Var, *rest: tirx.Var) -> tirx.PrimExpr:
        idx = rest[0]
        for axis, extent in zip(rest[1:], inner[1:]):
            idx = idx * extent + axis
        byte = packed[o, tirx.floordiv(idx, 2)].astype("int32")
        nibble = tirx.bitwise_and(tirx.shift_right(byte, tirx.floormod(idx, 2) * 4), 15)
        return (nibble - 8).astype("int8")

    return te.compute(spec.w_shape, unpack, name="unpack_int4", attrs=attrs)


def depthwise_dot(spec: KernelSpec, x: te.Tensor, w: te.Tensor, qp: te.Tensor | None) -> te.Tensor:
    """The accumulator ``(n, c, oh, ow)`` of a depthwise conv: fp32 for a float one
    (:attr:`KernelSpec.float_depthwise`, ``qp`` None) and for an integer one (:attr:`KernelSpec.depthwise`)
    whose sums stay exact in fp32 (:attr:`KernelSpec.depthwise_in_float`: every depthwise conv of a real
    model), else int32.

    The input is quantized (float: copied) and padded once into ``(n, c, rows, phase, cols)``, column
    ``j * sw + phase`` of the padded row at ``[.., phase, j]``: output column ``xx`` then reads tap ``rx``
    at ``[.., (rx * dw) % sw, xx + (rx * dw) // sw]``, contiguous in ``xx`` for any stride (a stride-2 row
    read straight from the padded layout is a gather).

    An integer depthwise conv multiplies one code by one weight per tap: no dot instruction applies, and
    int32 lanes multiply with ``vpmulld`` (two uops on one port of an x86 core) against two fp32 FMAs a
    cycle. Its codes are therefore staged as fp32 values and summed with FMAs, to the same integers:
    EfficientNet-Lite0's uniform-W8A8 depthwise convs ran 3.7 ms in int32, 2.6 ms in fp32 (one thread of
    a Sapphire Rapids Xeon)."""
    n, c, h, wd = spec.x_shape
    (ph, pw), (sh, sw), (dh, dw) = spec.padding, spec.stride, spec.dilation
    _, _, kh, kw = spec.w_shape
    _, _, oh, ow = spec.out_shape
    if qp is None:
        dtype, acc, zero, name = "float32", "float32", tirx.const(0.0, "float32"), "pad"
        code: Callable[[tirx.PrimExpr], tirx.PrimExpr] = lambda v: v  # noqa: E731
    else:
        acc, name = ("float32" if spec.depthwise_in_float else "int32"), "quantize"
        # fp32 sums stage the codes' integer values as fp32 too
        dtype = acc if spec.depthwise_in_float else "int8" if spec.a_mode == "s8" else "uint8"
        zero = qp[4].astype(dtype) if spec.a_mode == "z8" else tirx.const(0, dtype)
        code = lambda v: quantize(v, qp, dtype, codes=spec.codes_in)  # noqa: E731
    rows, cols = spec.padded_hw[0], -(-spec.padded_hw[1] // sw)

    def quantize_pad(b: tirx.Var, ch: tirx.Var, i: tirx.Var, p: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        inside, row = clamped_read(i - ph, j * sw + p - pw, h, wd)
        return tirx.Select(inside, code(x[b, ch, row, j * sw + p - pw]), zero)

    xq = te.compute((n, c, rows, sw, cols), quantize_pad, name=name)
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    return te.compute(
        (n, c, oh, ow),
        lambda b, ch, y, xx: te.sum(
            xq[b, ch, y * sh + ry * dh, tirx.floormod(rx * dw, sw), xx + tirx.floordiv(rx * dw, sw)].astype(acc)
            * w[ch, 0, ry, rx].astype(acc), axis=[ry, rx]),
        name="depthwise")


def float_blocked_conv(spec: KernelSpec, x: te.Tensor, w: te.Tensor) -> Callable[..., tirx.PrimExpr]:
    """The fp32 accumulator of a blocked fp32 conv (:attr:`KernelSpec.float_blocked`), ``(n, o, y, x) ->
    value``: the input zero-padded once (no pass where the conv has no padding), the reduction over
    input channels and taps against ``[O/16, C, kh, kw, 16]`` weights into ``(n, O/16, oh, ow, 16)``.
    A linear layer: ``(rows, O/16, 16)`` against ``[O/16, K, 16]``, ``(row, o) -> value``."""
    if spec.op == "linear":
        rows, k = spec.x_shape
        rk = te.reduce_axis((0, k), name="rk")
        acc = te.compute((rows, spec.o_tiles, LANES),
                         lambda m, oc, oi: te.sum(x[m, rk] * w[oc, rk, oi], axis=rk), name="fdot")
        return lambda m, o: acc[m, tirx.floordiv(o, LANES), tirx.floormod(o, LANES)]
    n, c, h, wd = spec.x_shape
    (ph, pw), (sh, sw), (dh, dw) = spec.padding, spec.stride, spec.dilation
    _, _, kh, kw = spec.w_shape
    _, _, oh, ow = spec.out_shape
    xp = x
    if any(spec.pads):
        def pad(b: tirx.Var, ch: tirx.Var, i: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
            inside, row = clamped_read(i - ph, j - pw, h, wd)
            return tirx.Select(inside, x[b, ch, row, j - pw], tirx.const(0.0, "float32"))

        xp = te.compute((n, c, *spec.padded_hw), pad, name="pad")
    rc = te.reduce_axis((0, c), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    acc = te.compute(
        (n, spec.o_tiles, oh, ow, LANES),
        lambda b, oc, y, xx, oi: te.sum(xp[b, rc, y * sh + ry * dh, xx * sw + rx * dw] * w[oc, rc, ry, rx, oi],
                                        axis=[rc, ry, rx]),
        name="fdot")
    return blocked_reader(spec, acc)


def int_compute(spec: KernelSpec, t: dict[str, te.Tensor]) -> te.Tensor:
    """The output tensor of an integer, fp32 or weight-only kernel; ``t`` maps ``spec.inputs()`` names to
    placeholders."""
    x, w = t["x"], t["w"]
    if spec.packed:
        _, acc_at = packed_dot(spec, x, w, t["qp"])
        return epilogue(spec, t, acc_at)
    if spec.depthwise:
        if spec.w_mode == "i4p":
            w = unpack_plain(spec, w)
        return epilogue(spec, t, depthwise_dot(spec, x, w, t["qp"]))
    if spec.float_depthwise:
        return epilogue(spec, t, depthwise_dot(spec, x, w, None))
    if spec.float_blocked:
        return epilogue(spec, t, float_blocked_conv(spec, x, w))
    padding = spec.pads
    if spec.a_mode == "z8":
        x, padding = zero_point_input(spec, x, t["qp"])
    elif spec.a_mode != "f32":
        qp = t["qp"]
        dtype = "uint8" if spec.a_mode == "u8" else "int8"
        xq = te.compute(x.shape, lambda *i: quantize(x(*i), qp, dtype, codes=spec.codes_in), name="quantize")
        x = xq if spec.w_mode != "f32" else te.compute(
            xq.shape, lambda *i: xq(*i).astype("float32") * qp[3], name="dequantize_x")
    if spec.w_mode == "i4p":
        w = unpack_plain(spec, w)
    if spec.w_mode != "f32" and spec.a_mode == "f32":  # weight-only: dequantize weights in-kernel
        wq, scale = w, t["scale"]
        w = te.compute(wq.shape, lambda o, *r: wq(o, *r).astype("float32") * scale[o], name="dequantize_w")
    acc_dtype = "int32" if spec.integer else "float32"
    if spec.op == "linear":
        r = te.reduce_axis((0, spec.w_shape[1]), name="k")
        acc = te.compute(
            spec.out_shape,
            lambda n, o: te.sum(x[n, r].astype(acc_dtype) * w[o, r].astype(acc_dtype), axis=r),
            name="matmul",
        )
    elif spec.groups == 1:
        acc = topi.nn.conv2d_nchw(x, w, spec.stride, padding, spec.dilation, out_dtype=acc_dtype)
    else:
        acc = topi.nn.group_conv2d_nchw(x, w, spec.stride, padding, spec.dilation, spec.groups,
                                        out_dtype=acc_dtype)
    return epilogue(spec, t, acc)


__all__ = ["conv_input_codes", "depthwise_dot", "float_blocked_conv", "int_compute", "quantize_words", "unpack_plain",
           "word_byte", "zero_point_input"]
