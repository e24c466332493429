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


@dataclass(frozen=True)
class KernelSpec:
    """Everything that determines a layer kernel's code."""

    op: str  # "conv2d" | "linear"
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]  # logical weight shape (O, I/groups, kh, kw) or (O, K)
    w_mode: str  # "f32" | "i8" | "i4p"
    a_mode: str  # "f32" | "u8" | "s8"
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    epilogue: tuple[str, ...] = ()  # sequence of "relu" | "add"

    @property
    def integer(self) -> bool:
        return self.w_mode != "f32" and self.a_mode != "f32"

    @property
    def k(self) -> int:
        return math.prod(self.w_shape[1:])

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
        w_store = {"f32": (self.w_shape, "float32"), "i8": (self.w_shape, "int8"),
                   "i4p": ((o, (self.k + 1) // 2), "uint8")}[self.w_mode]
        args = [("x", self.x_shape, "float32"), ("w", *w_store)]
        if self.w_mode != "f32":
            args.append(("scale", (o,), "float32"))
        args.append(("bias", (o,), "float32"))
        if self.a_mode != "f32":
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


def _compute(spec: KernelSpec, tensors: list[te.Tensor]) -> te.Tensor:
    names = [name for name, _, _ in spec.inputs()]
    t = dict(zip(names, tensors))
    x, w = t["x"], t["w"]
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
    residuals = [t[f"res{i}"] for i, e in enumerate(spec.epilogue) if e == "add"]

    def epilogue(*i: tirx.Var) -> tirx.PrimExpr:
        v = acc(*i).astype("float32")
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
