"""Tensor-expression kernels for one quantized layer each (imports TVM: load lazily).

A layer kernel is a single PrimFunc: quantize the float input (``floor(x * inv_s + 0.5)``,
clipped, stored as uint8/int8), the convolution or matmul (int8 x int8 -> int32, packed int4
weights unpacked inside the kernel, or fp32), dequantize with a per-channel scale, add the bias and
the fused epilogue (ReLU, residual add). Scales are runtime tensors, so layers of equal shape share
one kernel, one tuning task and one measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from tvm import te, tirx, topi

from mpsearch.hardware.memory import bitserial_weight_shape, bitserial_word_bits

OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps keeps the kernel whole and alone
LANES = 16  # output channels per int8 dot (one 512-bit int32 accumulator)
KGROUP = 2  # reduction elements per lane per dot (one vpmaddwd pair)
KQUAD = 4  # reduction elements per lane of the 16x4 dot (vpmaddubsw + vpmaddwd, or one VNNI vpdpbusd)
UNPACK_RULE = "mpsearch_unpack_int4"  # MetaSchedule custom rule of the in-kernel int4 unpack (tvm_backend)


@dataclass(frozen=True)
class KernelSpec:
    """Everything that determines a layer kernel's code."""

    op: str  # "conv2d" | "linear"
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]  # logical weight shape (O, I/groups, kh, kw) or (O, K)
    w_mode: str  # "f32" | "f16" | "i8" | "i4p" | "b2"
    a_mode: str  # "f32" | "f16" | "u8" | "s8" | "z8" | "b2"   (f16: kernels_fp.py; b2 bit-serial: kernels_bitserial.py)
    # z8: asymmetric activations, uint8 codes around a runtime zero point (qp[4]); integer kernels take
    # the correction -z·scale·rowsum(w) folded into their bias (lowering.kernel_arrays)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    epilogue: tuple[str, ...] = ()  # sequence of "relu" | "add"
    a_bits: int = 8  # activation bit width of an integer kernel (u8 codes <= 2**a_bits - 1)
    dot_isa: str = ""  # int8 dot instructions of the target: "" | "avx512bw" | "avx512vnni" (dot_isa())

    @property
    def integer(self) -> bool:
        return (self.w_mode in ("i8", "i4p") and self.a_mode in ("u8", "s8", "z8")) or self.bitserial

    @property
    def bitserial(self) -> bool:
        """2-bit weights and activations as bit-planes, reduced with popcounts (kernels_bitserial.py)."""
        return self.w_mode == "b2"

    @property
    def k(self) -> int:
        return math.prod(self.w_shape[1:])

    @property
    def kgroup(self) -> int:
        """Reduction elements per lane of the blocked dot: 4 (``[O/16, K/4, 16, 4]`` tiles, the 16x4 dot)
        where that dot is exact on the target, else 2 (the exact 16x2 ``vpmaddwd`` dot).

        The 16x4 dot multiplies u8 activations by s8 weights. VNNI's ``vpdpbusd`` adds the four products
        straight into int32: exact for any u8 activation. AVX-512BW's ``vpmaddubsw`` first adds product
        pairs into int16 with saturation, exact only while 2 * amax * |wmax| <= 32767: 4-bit activations
        (2 * 15 * 128 = 3840) or 4-bit weights (2 * 255 * 8 = 4080). ``a_bits`` must then match the
        runtime clip (``qp[2]``), which :func:`~mpsearch.hardware.lowering.kernel_spec` guarantees."""
        if not self.integer or self.groups != 1 or self.a_mode != "u8" or self.w_shape[1] % KQUAD:
            return KGROUP
        exact = self.dot_isa == "avx512vnni" or (
            self.dot_isa == "avx512bw" and (self.a_bits <= 4 or self.w_mode == "i4p"))
        return KQUAD if exact else KGROUP

    @property
    def packed(self) -> bool:
        """Whether the int8 reduction runs as a blocked dot product: weights packed at prepare time
        into ``[O/16, K/2, 16, 2]`` tiles (conv: ``[O/16, C/2, kh, kw, 16, 2]``; ``/4`` and ``4`` where
        :attr:`kgroup` is 4), the input quantized into channel pairs (quads), so MetaSchedule can
        tensorize the reduction with :data:`DOT_INTRINSICS` (:data:`DOT4_INTRINSICS`).
        Shapes that do not tile (e.g. a 1-channel stem, a 10-class head) keep the plain layout."""
        if not self.integer or self.groups != 1 or self.bitserial:
            return False
        if self.w_mode == "i4p" and self.op == "linear":
            # a GEMV reads each weight once: unpacking the whole int4 matrix into an int8 buffer for
            # the dot costs more than it saves (measured 0.37x of fp32 vs 0.87x unpacked in the loop;
            # through the 16x4 dot still 0.79x vs 0.93x: 1024x1024, one thread, 8 trials each)
            return False
        reduce_dim = self.w_shape[1]  # input channels (conv) or K (linear)
        return self.w_shape[0] % LANES == 0 and reduce_dim % KGROUP == 0

    def dot_tile_shape(self) -> tuple[int, ...]:
        """The blocked int8 weight layout of a ``packed`` kernel."""
        o, g = self.w_shape[0], self.kgroup
        if self.op == "linear":
            return (o // LANES, self.w_shape[1] // g, LANES, g)
        _, c, kh, kw = self.w_shape
        return (o // LANES, c // g, kh, kw, LANES, g)

    def stored_weight_shape(self) -> tuple[int, ...]:
        """int4 weights keep the blocked layout with each lane's code pair in one byte (a 16x4 tile
        ``[..., 16, 4]`` is stored ``[..., 16, 2]``). Bit-serial weights: two packed bit-planes."""
        if self.bitserial:
            return bitserial_weight_shape(self.w_shape)
        if self.packed:
            tiles = self.dot_tile_shape()
            if self.w_mode == "i4p":
                return tiles[:-1] if tiles[-1] == KGROUP else (*tiles[:-1], tiles[-1] // 2)
            return tiles
        if self.w_mode == "i4p":
            return (self.w_shape[0], (self.k + 1) // 2)
        return self.w_shape

    @property
    def out_shape(self) -> tuple[int, ...]:
        n = self.x_shape[0]
        o = self.w_shape[0]
        if self.op == "linear":
            return (n, o)
        _, _, h, w = self.x_shape
        kh, kw = self.w_shape[2:]
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        return (n, o, oh, ow)

    def inputs(self) -> list[tuple[str, tuple[int, ...], str]]:
        """``(name, shape, dtype)`` of the kernel's inputs, in call order (output excluded)."""
        o = self.w_shape[0]
        w_dtype = {"f32": "float32", "f16": "float16", "i8": "int8", "i4p": "uint8",
                   "b2": f"uint{bitserial_word_bits(self.w_shape[1])}"}[self.w_mode]
        args = [("x", self.x_shape, "float32"), ("w", self.stored_weight_shape(), w_dtype)]
        if self.w_mode in ("i8", "i4p", "b2"):
            args.append(("scale", (o,), "float32"))
        args.append(("bias", (o,), "float32"))
        if self.a_mode in ("u8", "s8", "b2"):
            args.append(("qp", (4,), "float32"))  # inv_scale, qmin, qmax, scale
        elif self.a_mode == "z8":
            args.append(("qp", (5,), "float32"))  # inv_scale, qmin, qmax, scale, zero point
        args += [(f"res{i}", self.out_shape, "float32") for i, e in enumerate(self.epilogue) if e == "add"]
        return args

    def flops(self) -> int:
        return 2 * math.prod(self.out_shape) * (self.k if self.op == "conv2d" else self.w_shape[1])


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
    2-bit codes as two's-complement bit-planes when ``spec.bitserial``."""
    if spec.bitserial:
        from mpsearch.hardware.kernels_bitserial import pack_bitserial

        return pack_bitserial(spec, codes)
    if not spec.packed:
        return pack_int4(codes) if spec.w_mode == "i4p" else codes.astype(np.int8)
    o, g = spec.w_shape[0], spec.kgroup
    if spec.op == "linear":
        tiles = codes.reshape(o // LANES, LANES, -1, g).transpose(0, 2, 1, 3)
    else:
        _, c, kh, kw = spec.w_shape
        tiles = codes.reshape(o // LANES, LANES, c // g, g, kh, kw).transpose(0, 2, 4, 5, 1, 3)
    if spec.w_mode == "i4p":  # code pairs of one lane in one byte: low nibble first, stored as code + 8
        tiles = tiles.astype(np.int16) + 8
        pairs = (tiles[..., 0::2] | (tiles[..., 1::2] << 4)).astype(np.uint8)
        return np.ascontiguousarray(pairs[..., 0] if g == KGROUP else pairs)
    return np.ascontiguousarray(tiles.astype(np.int8))


def _quantize(x: tirx.PrimExpr, qp: te.Tensor, dtype: str) -> tirx.PrimExpr:
    v = tirx.floor(x * qp[0] + 0.5)
    if int(qp.shape[0]) == 5:  # z8: unsigned codes around the zero point qp[4] (u8/s8 code unchanged)
        v = v + qp[4]
    return te.max(te.min(v, qp[2]), qp[1]).astype(dtype)


def _zero_point_input(spec: KernelSpec, x: te.Tensor, qp: te.Tensor) -> tuple[te.Tensor, tuple[int, int]]:
    """The z8 input of a plain-layout kernel and the padding left for the conv. Against integer weights:
    uint8 codes, a conv's padding filled here with the code of 0.0 (the zero point ``qp[4]``, not code 0),
    so that the bias-folded ``-z·rowsum(w)`` holds at the borders too. Against float weights: dequantized,
    ``(q - z) · scale``, whose zero padding is then exact."""
    if spec.w_mode not in ("i8", "i4p"):
        xq = te.compute(x.shape, lambda *i: _quantize(x(*i), qp, "uint8"), name="quantize")
        return te.compute(xq.shape, lambda *i: (xq(*i).astype("float32") - qp[4]) * qp[3],
                          name="dequantize_x"), spec.padding
    if spec.op == "linear" or spec.padding == (0, 0):
        return te.compute(x.shape, lambda *i: _quantize(x(*i), qp, "uint8"), name="quantize"), spec.padding
    n, c, h, wd = spec.x_shape
    ph, pw = spec.padding

    def quantize_pad(b: tirx.Var, ch: tirx.Var, i: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        inside = tirx.all(i >= ph, i < h + ph, j >= pw, j < wd + pw)
        return tirx.if_then_else(inside, _quantize(x[b, ch, i - ph, j - pw], qp, "uint8"), qp[4].astype("uint8"))

    return te.compute((n, c, h + 2 * ph, wd + 2 * pw), quantize_pad, name="quantize"), (0, 0)


def _packed_dot(spec: KernelSpec, x: te.Tensor, w: te.Tensor, qp: te.Tensor) -> tuple[te.Tensor, object]:
    """Quantize the input into channel pairs (quads where ``spec.kgroup`` is 4) and reduce against the
    blocked weights; the int32 accumulator has the 16 output lanes innermost. Returns it and
    ``(n, o, ...) -> acc value``."""
    dtype = "uint8" if spec.a_mode in ("u8", "z8") else "int8"
    g = spec.kgroup  # g == 2 builds exactly the 16x2 dot's code of before: its tuning records stay valid
    if spec.w_mode == "i4p":  # unpacked next to the dot (MetaSchedule places the unpack per tile)
        packed = w

        def unpack(*i: tirx.Var) -> tirx.PrimExpr:
            if g == KQUAD:  # a lane's quad in two bytes
                byte = packed(*i[:-1], tirx.floordiv(i[-1], 2)).astype("int32")
                nibble = tirx.bitwise_and(tirx.shift_right(byte, tirx.floormod(i[-1], 2) * 4), 15)
                return (nibble - 8).astype("int8")
            byte = packed(*i[:-1]).astype("int32")
            return (tirx.bitwise_and(tirx.shift_right(byte, i[-1] * 4), 15) - 8).astype("int8")

        # Its own schedule rule (tvm_backend) keeps it from being inlined into the dot, which would
        # block tensorizing: the weights are unpacked once per call, then go through the int8 dot.
        w = te.compute(spec.dot_tile_shape(), unpack, name="unpack_int4", attrs={"schedule_rule": UNPACK_RULE})
    if spec.op == "linear":
        n, k = spec.x_shape
        xq = te.compute((n, k // g, g), lambda b, k2, ki: _quantize(x[b, k2 * g + ki], qp, dtype),
                        name="quantize")
        k2 = te.reduce_axis((0, k // g), name="k2")
        ki = te.reduce_axis((0, g), name="ki")
        acc = te.compute(
            (n, spec.w_shape[0] // LANES, LANES),
            lambda b, oc, oi: te.sum(xq[b, k2, ki].astype("int32") * w[oc, k2, oi, ki].astype("int32"),
                                     axis=[k2, ki]),
            name="dot")
        return acc, lambda b, o: acc[b, tirx.floordiv(o, LANES), tirx.floormod(o, LANES)]
    n, c, h, wd = spec.x_shape
    (ph, pw), (sh, sw), (dh, dw) = spec.padding, spec.stride, spec.dilation
    _, _, kh, kw = spec.w_shape

    def quantize_pad(b: tirx.Var, c2: tirx.Var, i: tirx.Var, j: tirx.Var, ci: tirx.Var) -> tirx.PrimExpr:
        inside = tirx.all(i >= ph, i < h + ph, j >= pw, j < wd + pw)
        v = _quantize(x[b, c2 * g + ci, i - ph, j - pw], qp, dtype)
        # z8: the border is the code of 0.0, the zero point (the bias-folded -z·rowsum(w) counts it)
        return tirx.if_then_else(inside, v, qp[4].astype(dtype) if spec.a_mode == "z8" else tirx.const(0, dtype))

    xq = te.compute((n, c // g, h + 2 * ph, wd + 2 * pw, g), quantize_pad, name="quantize")
    c2 = te.reduce_axis((0, c // g), name="c2")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    ci = te.reduce_axis((0, g), name="ci")
    _, _, oh, ow = spec.out_shape
    acc = te.compute(
        (n, spec.w_shape[0] // LANES, oh, ow, LANES),
        lambda b, oc, y, xx, oi: te.sum(
            xq[b, c2, y * sh + ry * dh, xx * sw + rx * dw, ci].astype("int32")
            * w[oc, c2, ry, rx, oi, ci].astype("int32"), axis=[c2, ry, rx, ci]),
        name="dot")
    return acc, lambda b, o, y, xx: acc[b, tirx.floordiv(o, LANES), y, xx, tirx.floormod(o, LANES)]


def _compute(spec: KernelSpec, tensors: list[te.Tensor]) -> te.Tensor:
    names = [name for name, _, _ in spec.inputs()]
    t = dict(zip(names, tensors))
    x, w = t["x"], t["w"]
    if "f16" in (spec.w_mode, spec.a_mode):  # fp16 operand: fp32-accumulating float kernel
        from mpsearch.hardware.kernels_fp import half_compute

        if spec.a_mode == "z8":  # kernels_fp quantizes u8/s8 only: give it the dequantized input as fp32
            t = {**t, "x": _zero_point_input(spec, x, t["qp"])[0]}
            spec = replace(spec, a_mode="f32")
        return half_compute(spec, t)
    if spec.bitserial:  # 2-bit weights and activations: popcounts over bit-planes (topi's bitpack)
        from mpsearch.hardware.kernels_bitserial import bitserial_compute

        return bitserial_compute(spec, t)
    if spec.packed:
        _, acc_at = _packed_dot(spec, x, w, t["qp"])
        return _epilogue(spec, t, acc_at)
    padding = spec.padding
    if spec.a_mode == "z8":
        x, padding = _zero_point_input(spec, x, t["qp"])
    elif spec.a_mode != "f32":
        qp = t["qp"]
        dtype = "uint8" if spec.a_mode == "u8" else "int8"
        xq = te.compute(
            x.shape,
            lambda *i: te.max(te.min(tirx.floor(x(*i) * qp[0] + 0.5), qp[2]), qp[1]).astype(dtype),
            name="quantize",
        )
        x = xq if spec.w_mode != "f32" else te.compute(
            xq.shape, lambda *i: xq(*i).astype("float32") * qp[3], name="dequantize_x")
    if spec.w_mode == "i4p":
        packed, shape, inner = w, spec.w_shape, spec.w_shape[1:]

        def unpack(o: tirx.Var, *rest: tirx.Var) -> tirx.PrimExpr:
            idx = rest[0]
            for axis, extent in zip(rest[1:], inner[1:]):
                idx = idx * extent + axis
            byte = packed[o, tirx.floordiv(idx, 2)].astype("int32")
            nibble = tirx.bitwise_and(tirx.shift_right(byte, tirx.floormod(idx, 2) * 4), 15)
            return (nibble - 8).astype("int8")

        w = te.compute(shape, unpack, name="unpack_int4")
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
    return _epilogue(spec, t, acc)


def _epilogue(spec: KernelSpec, t: dict[str, te.Tensor], acc_at: object) -> te.Tensor:
    """Dequantize (integer kernels), add the bias, then the fused ReLU / residual adds."""
    residuals = [t[f"res{i}"] for i, e in enumerate(spec.epilogue) if e == "add"]

    def epilogue(*i: tirx.Var) -> tirx.PrimExpr:
        v = acc_at(*i).astype("float32")
        if spec.integer:
            v = v * t["scale"][i[1]]
        v = v + t["bias"][i[1]]
        res = iter(residuals)
        for op in spec.epilogue:
            v = te.max(v, tirx.const(0.0, "float32")) if op == "relu" else v + next(res)(*i)
        return v

    return te.compute(spec.out_shape, epilogue, name="epilogue")


def make_kernel(spec: KernelSpec) -> tirx.PrimFunc:
    """The PrimFunc of one layer kernel, marked opaque so Relax fusion leaves it whole."""
    tensors = [te.placeholder(shape, dtype, name=name) for name, shape, dtype in spec.inputs()]
    out = _compute(spec, tensors)
    func = te.create_prim_func([*tensors, out])
    return func.without_attr("global_symbol").with_attr("op_pattern", OPAQUE)


# -- the int8 dot product as a tensor intrinsic ---------------------------------------------------
#
# 16 output lanes x 2 reduction elements per call: the int8 weight pairs are sign-extended to int16
# and multiplied against the broadcast activation pair with one ``vpmaddwd`` (AVX-512BW), which adds
# each product pair straight into int32. Unlike TVM's ``dot_16x4_avx512`` (``vpmaddubsw``), nothing
# saturates at int16 (255 * 127 * 2 > 32767), so the kernels stay exact for 8-bit activations and
# weights, and signed activations need no zero-point compensation.

DOT_INTRINSICS = {"u8": "mpsearch_dot_16x2_u8s8_avx512", "s8": "mpsearch_dot_16x2_s8s8_avx512"}
# 16 lanes x 4 reduction elements (u8 x s8 only), used where KernelSpec.kgroup says it is exact. TVM's
# dot_16x4_avx512 / dot_16x4_vnni (description and code; vpdpbusd's operands retyped for LLVM >= 21),
# registered under mpsearch's names so that replaying a tuned schedule needs no import of
# tvm.s_tir.tensor_intrin (~60 s: every target's intrinsics) and keeps working with TVM's VNNI one broken.
DOT4_INTRINSICS = {"avx512bw": "mpsearch_dot_16x4_u8s8_avx512", "avx512vnni": "mpsearch_dot_16x4_u8s8_vnni"}
_registered = False


def _dot_desc(k: int, a_dtype: str) -> tirx.PrimFunc:
    """What every dot intrinsic computes: 16 int32 lanes += ``k`` products of a broadcast input
    group (``a_dtype``) with the lanes' int8 weights."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (k,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (LANES, k), "int8", offset_factor=1)
        C = T.match_buffer(c, (LANES,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:k], B[0:LANES, 0:k])
            T.writes(C[0:LANES])
            for i in T.serial(0, LANES):
                for j in T.serial(0, k):
                    with T.sblock("update"):
                        vi, vj = T.axis.remap("SR", [i, j])
                        C[vi] = C[vi] + T.cast(A[vj], "int32") * T.cast(B[vi, vj], "int32")

    return desc


def _dot_intrinsic(a_dtype: str) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (KGROUP,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (LANES, KGROUP), "int8", offset_factor=1)
        C = T.match_buffer(c, (LANES,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:KGROUP], B[0:LANES, 0:KGROUP])
            T.writes(C[0:LANES])
            pair = T.reinterpret(T.Cast("int16x2", A.vload([0], a_dtype + "x2")), dtype="int32")
            a16 = T.reinterpret(T.broadcast(pair, LANES), dtype="int16x32")
            b16 = T.Cast("int16x32", B.vload([0, 0], dtype="int8x32"))
            C[T.ramp(T.int32(0), 1, LANES)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pmaddw.d.512"), b16, a16, dtype="int32x16")

    return _dot_desc(KGROUP, a_dtype), impl


def _dot4_intrinsic(isa: str) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    from tvm.script import tirx as T
    from tvm.target import codegen

    # LLVM 21 retyped vpdpbusd's byte operands from <16 x i32> to <64 x i8> (TVM 0.27's own
    # dot_16x4_vnni still passes i32 vectors and fails LLVM 22's verifier)
    operand = "int8x64" if codegen.llvm_version_major() >= 21 else "int32x16"

    @T.prim_func(s_tir=True)
    def vnni(a: T.handle, b: T.handle, c: T.handle) -> None:  # vpdpbusd: the four products into int32
        A = T.match_buffer(a, (KQUAD,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (LANES, KQUAD), "int8", offset_factor=1)
        C = T.match_buffer(c, (LANES,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:KQUAD], B[0:LANES, 0:KQUAD])
            T.writes(C[0:LANES])
            quad = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            C[T.ramp(T.int32(0), 1, LANES)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), C.vload([0], dtype="int32x16"),
                T.reinterpret(T.broadcast(quad, LANES), dtype=operand),
                T.reinterpret(B.vload([0, 0], dtype="int8x64"), dtype=operand), dtype="int32x16")

    @T.prim_func(s_tir=True)
    def avx512(a: T.handle, b: T.handle, c: T.handle) -> None:  # vpmaddubsw (saturating s16 pairs), vpmaddwd
        A = T.match_buffer(a, (KQUAD,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (LANES, KQUAD), "int8", offset_factor=1)
        C = T.match_buffer(c, (LANES,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:KQUAD], B[0:LANES, 0:KQUAD])
            T.writes(C[0:LANES])
            quad = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            a8 = T.reinterpret(T.broadcast(quad, LANES), dtype="uint8x64")
            pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pmaddubs.w.512"),
                                            a8, B.vload([0, 0], dtype="int8x64"), dtype="int16x32")
            C[T.ramp(T.int32(0), 1, LANES)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pmaddw.d.512"), pairs, T.int16x32(1),
                dtype="int32x16")

    return _dot_desc(KQUAD, "uint8"), vnni if isa == "avx512vnni" else avx512


def register_intrinsics() -> None:
    """Register :data:`DOT_INTRINSICS` with TVM (idempotent). Needed wherever a tuned schedule that
    uses them is replayed, not only while tuning."""
    global _registered
    if _registered:
        return
    from tvm.s_tir import TensorIntrin

    for a_mode, name in DOT_INTRINSICS.items():
        if TensorIntrin.get(name, allow_missing=True) is None:
            TensorIntrin.register(name, *_dot_intrinsic("uint8" if a_mode == "u8" else "int8"))
    for isa, name in DOT4_INTRINSICS.items():
        if TensorIntrin.get(name, allow_missing=True) is None:
            TensorIntrin.register(name, *_dot4_intrinsic(isa))
    _registered = True


def dot_isa(target: object) -> str:
    """The int8 dot instructions of ``target`` that the kernels use (:attr:`KernelSpec.dot_isa`):
    ``"avx512vnni"`` (vpdpbusd, e.g. mcpu cascadelake / icelake-server), ``"avx512bw"`` (vpmaddwd,
    vpmaddubsw) or ``""`` (none: a non-x86 or pre-AVX-512 target)."""
    from tvm.target import codegen

    if getattr(getattr(target, "kind", None), "name", "") != "llvm":
        return ""
    try:
        if not codegen.target_has_features(["avx512bw", "avx512f"], target):
            return ""
        return "avx512vnni" if codegen.target_has_features(["avx512vnni"], target) else "avx512bw"
    except Exception:  # a target LLVM cannot describe (unknown triple): no intrinsic
        return ""


def dot_intrinsics_for(target: object) -> list[str]:
    """The dot intrinsics ``target`` can run (AVX-512BW x86 CPUs), else ``[]``: the exact 16x2 dots and
    the 16x4 dot of its ISA. Only that one: both 16x4 dots share a description, and the vpmaddubsw one
    would be inexact on the 8-bit kernels a VNNI target blocks 16x4."""
    isa = dot_isa(target)
    return [DOT4_INTRINSICS[isa], *DOT_INTRINSICS.values()] if isa else []  # the denser dot tried first
