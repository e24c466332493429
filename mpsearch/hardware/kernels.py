"""Tensor-expression kernels for one quantized layer each (imports TVM: load lazily).

A layer kernel is a single PrimFunc: quantize the float input (``floor(x * inv_s + 0.5)``,
clipped, stored as uint8/int8), the convolution or matmul (int8 x int8 -> int32, packed int4
weights unpacked inside the kernel, or fp32), dequantize with a per-channel scale, add the bias and
the fused epilogue (ReLU, residual add). Scales are runtime tensors, so layers of equal shape share
one kernel, one tuning task and one measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tvm import te, tirx, topi

OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps keeps the kernel whole and alone
LANES = 16  # output channels per int8 dot (one 512-bit int32 accumulator)
KGROUP = 2  # reduction elements per lane per dot (one vpmaddwd pair)
UNPACK_RULE = "mpsearch_unpack_int4"  # MetaSchedule custom rule of the in-kernel int4 unpack (tvm_backend)


@dataclass(frozen=True)
class KernelSpec:
    """Everything that determines a layer kernel's code."""

    op: str  # "conv2d" | "linear"
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]  # logical weight shape (O, I/groups, kh, kw) or (O, K)
    w_mode: str  # "f32" | "f16" | "i8" | "i4p"
    a_mode: str  # "f32" | "f16" | "u8" | "s8"   (f16 kernels: kernels_fp.py)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    epilogue: tuple[str, ...] = ()  # sequence of "relu" | "add"

    @property
    def integer(self) -> bool:
        return self.w_mode in ("i8", "i4p") and self.a_mode in ("u8", "s8")

    @property
    def k(self) -> int:
        return math.prod(self.w_shape[1:])

    @property
    def packed(self) -> bool:
        """Whether the int8 reduction runs as a blocked dot product: weights packed at prepare time
        into ``[O/16, K/2, 16, 2]`` tiles (conv: ``[O/16, C/2, kh, kw, 16, 2]``), the input quantized
        into channel pairs, so MetaSchedule can tensorize the reduction with :data:`DOT_INTRINSICS`.
        Shapes that do not tile (e.g. a 1-channel stem, a 10-class head) keep the plain layout."""
        if not self.integer or self.groups != 1:
            return False
        if self.w_mode == "i4p" and self.op == "linear":
            # a GEMV reads each weight once: unpacking the whole int4 matrix into an int8 buffer for
            # the dot costs more than it saves (measured 0.37x of fp32 vs 0.87x unpacked in the loop)
            return False
        reduce_dim = self.w_shape[1]  # input channels (conv) or K (linear)
        return self.w_shape[0] % LANES == 0 and reduce_dim % KGROUP == 0

    def dot_tile_shape(self) -> tuple[int, ...]:
        """The blocked int8 weight layout of a ``packed`` kernel."""
        o = self.w_shape[0]
        if self.op == "linear":
            return (o // LANES, self.w_shape[1] // KGROUP, LANES, KGROUP)
        _, c, kh, kw = self.w_shape
        return (o // LANES, c // KGROUP, kh, kw, LANES, KGROUP)

    def stored_weight_shape(self) -> tuple[int, ...]:
        """int4 weights keep the blocked layout with each lane's code pair in one byte."""
        if self.packed:
            tiles = self.dot_tile_shape()
            return tiles[:-1] if self.w_mode == "i4p" else tiles
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
        w_dtype = {"f32": "float32", "f16": "float16", "i8": "int8", "i4p": "uint8"}[self.w_mode]
        args = [("x", self.x_shape, "float32"), ("w", self.stored_weight_shape(), w_dtype)]
        if self.w_mode in ("i8", "i4p"):
            args.append(("scale", (o,), "float32"))
        args.append(("bias", (o,), "float32"))
        if self.a_mode in ("u8", "s8"):
            args.append(("qp", (4,), "float32"))  # inv_scale, qmin, qmax, scale
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
    int4 packed two per byte, int8 blocked into dot tiles when ``spec.packed`` (same bytes, reordered)."""
    if not spec.packed:
        return pack_int4(codes) if spec.w_mode == "i4p" else codes.astype(np.int8)
    o = spec.w_shape[0]
    if spec.op == "linear":
        tiles = codes.reshape(o // LANES, LANES, -1, KGROUP).transpose(0, 2, 1, 3)
    else:
        _, c, kh, kw = spec.w_shape
        tiles = codes.reshape(o // LANES, LANES, c // KGROUP, KGROUP, kh, kw).transpose(0, 2, 4, 5, 1, 3)
    if spec.w_mode == "i4p":  # the pair of one lane in one byte: low nibble first, stored as code + 8
        tiles = tiles.astype(np.int16) + 8
        return np.ascontiguousarray((tiles[..., 0] | (tiles[..., 1] << 4)).astype(np.uint8))
    return np.ascontiguousarray(tiles.astype(np.int8))


def _quantize(x: tirx.PrimExpr, qp: te.Tensor, dtype: str) -> tirx.PrimExpr:
    return te.max(te.min(tirx.floor(x * qp[0] + 0.5), qp[2]), qp[1]).astype(dtype)


def _packed_dot(spec: KernelSpec, x: te.Tensor, w: te.Tensor, qp: te.Tensor) -> tuple[te.Tensor, object]:
    """Quantize the input into channel pairs and reduce against the blocked weights; the int32
    accumulator has the 16 output lanes innermost. Returns it and ``(n, o, ...) -> acc value``."""
    dtype = "uint8" if spec.a_mode == "u8" else "int8"
    if spec.w_mode == "i4p":  # unpacked next to the dot (MetaSchedule places the unpack per tile)
        packed = w

        def unpack(*i: tirx.Var) -> tirx.PrimExpr:
            byte = packed(*i[:-1]).astype("int32")
            return (tirx.bitwise_and(tirx.shift_right(byte, i[-1] * 4), 15) - 8).astype("int8")

        # Its own schedule rule (tvm_backend) keeps it from being inlined into the dot, which would
        # block tensorizing: the weights are unpacked once per call, then go through the int8 dot.
        w = te.compute(spec.dot_tile_shape(), unpack, name="unpack_int4", attrs={"schedule_rule": UNPACK_RULE})
    if spec.op == "linear":
        n, k = spec.x_shape
        xq = te.compute((n, k // KGROUP, KGROUP), lambda b, k2, ki: _quantize(x[b, k2 * KGROUP + ki], qp, dtype),
                        name="quantize")
        k2 = te.reduce_axis((0, k // KGROUP), name="k2")
        ki = te.reduce_axis((0, KGROUP), name="ki")
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
        v = _quantize(x[b, c2 * KGROUP + ci, i - ph, j - pw], qp, dtype)
        return tirx.if_then_else(inside, v, tirx.const(0, dtype))

    xq = te.compute((n, c // KGROUP, h + 2 * ph, wd + 2 * pw, KGROUP), quantize_pad, name="quantize")
    c2 = te.reduce_axis((0, c // KGROUP), name="c2")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    ci = te.reduce_axis((0, KGROUP), name="ci")
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

        return half_compute(spec, t)
    if spec.packed:
        _, acc_at = _packed_dot(spec, x, w, t["qp"])
        return _epilogue(spec, t, acc_at)
    if spec.a_mode != "f32":
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
        acc = topi.nn.conv2d_nchw(x, w, spec.stride, spec.padding, spec.dilation, out_dtype=acc_dtype)
    else:
        acc = topi.nn.group_conv2d_nchw(x, w, spec.stride, spec.padding, spec.dilation, spec.groups,
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
_registered = False


def _dot_intrinsic(a_dtype: str) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (KGROUP,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (LANES, KGROUP), "int8", offset_factor=1)
        C = T.match_buffer(c, (LANES,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:KGROUP], B[0:LANES, 0:KGROUP])
            T.writes(C[0:LANES])
            for i in T.serial(0, LANES):
                for k in T.serial(0, KGROUP):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

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

    return desc, impl


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
    _registered = True


def dot_intrinsics_for(target: object) -> list[str]:
    """The dot intrinsics ``target`` can run (AVX-512BW x86 CPUs), else ``[]``."""
    from tvm.target import codegen

    if getattr(getattr(target, "kind", None), "name", "") != "llvm":
        return []
    try:
        ok = bool(codegen.target_has_features(["avx512bw", "avx512f"], target))
    except Exception:  # a target LLVM cannot describe (unknown triple): no intrinsic
        return []
    return list(DOT_INTRINSICS.values()) if ok else []
