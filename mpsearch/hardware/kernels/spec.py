"""What determines a layer kernel's code (:class:`KernelSpec`) and the dot-product tiling constants
(pure Python: nothing here imports TVM)."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    a_mode: str  # "f32" | "f16" | "u8" | "s8" | "z8" | "b2"   (f16: fp16.py; b2 bit-serial: bitserial.py)
    # z8: asymmetric activations, uint8 codes around a runtime zero point (qp[4]); integer kernels take
    # the correction -z·scale·rowsum(w) folded into their bias (lowering.kernel_arrays)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    epilogue: tuple[str, ...] = ()  # sequence of "relu" | "add"
    a_bits: int = 8  # activation bit width of an integer kernel (u8 codes <= 2**a_bits - 1)
    dot_isa: str = ""  # int8 dot instructions of the target: "" | "avx512bw" | "avx512vnni" | "dp4a" (dot_isa())

    @property
    def integer(self) -> bool:
        return (self.w_mode in ("i8", "i4p") and self.a_mode in ("u8", "s8", "z8")) or self.bitserial

    @property
    def bitserial(self) -> bool:
        """2-bit weights and activations as bit-planes, reduced with popcounts (bitserial.py)."""
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
        runtime clip (``qp[2]``), which :func:`~mpsearch.hardware.lowering.kernel_spec` guarantees.

        CUDA's ``dp4a`` (sm_61 on) adds four int8 x int8 (or uint8 x int8) products into int32 with no
        intermediate width at all: exact for every 8-bit activation, signed, unsigned or zero-pointed."""
        if not self.integer or self.groups != 1 or self.w_shape[1] % KQUAD:
            return KGROUP
        if self.dot_isa == "dp4a":
            return KQUAD if self.a_mode in ("u8", "s8", "z8") else KGROUP
        if self.a_mode != "u8":
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


__all__ = ["KGROUP", "KQUAD", "KernelSpec", "LANES", "OPAQUE", "UNPACK_RULE"]
