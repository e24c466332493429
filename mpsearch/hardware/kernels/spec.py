"""What determines a layer kernel's code (:class:`KernelSpec`) and the dot-product tiling constants
(pure Python: nothing here imports TVM)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mpsearch.hardware.memory import bitserial_weight_shape, bitserial_word_bits

OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps keeps the kernel whole and alone
LANES = 16  # output channels per int8 dot (one 512-bit int32 accumulator)
KGROUP = 2  # reduction elements per lane per dot (one vpmaddwd pair)
KQUAD = 4  # reduction elements per lane of the 16x4 dot (vpmaddubsw + vpmaddwd, VNNI vpdpbusd, ARM sdot/usdot)
KOCT = 8  # reduction elements per lane of the i8mm layout (smmla / usmmla: 2x8 by 8x2 int8 -> 2x2 int32)
ARM_DOT_ISAS = ("sdot", "i8mm")  # aarch64 dot_isa values (intrinsics.dot_isa)
# x86 dot_isa values: the blocked 16-lane layouts (a 512-bit vector; two 256-bit halves on AVX2)
X86_DOT_ISAS = ("avx2", "avx512bw", "avx512vnni")
# x86 dot_isa values whose 16x4 dot is vpmaddubsw: its int16 pair sums saturate on 8-bit x 8-bit codes
SATURATING_DOT_ISAS = ("avx2", "avx512bw")
# CUDA dot_isa values: "dp4a" (sm_61 on: __dp4a only), "wmma" (sm_72 on: __dp4a and the int8 / fp16 tensor cores)
CUDA_DOT_ISAS = ("dp4a", "wmma")
MMA_TILE = 16  # the wmma m16n16k16 tile: output channels and reduction of a tensor-core kernel are multiples of it
MAX_PADDING = 2  # the most a packed kernel's zero padding may multiply its weight codes by (KernelSpec.packed)
UNPACK_RULE = "mpsearch_unpack_int4"  # MetaSchedule custom rule of the in-kernel int4 unpack (tvm_backend)
INT_WEIGHT_MODES = ("i8", "i4p", "i2p")  # integer weight codes: int8, two 4-bit or four 2-bit codes a byte


@dataclass(frozen=True)
class KernelSpec:
    """Everything that determines a layer kernel's code."""

    op: str  # "conv2d" | "linear"
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]  # logical weight shape (O, I/groups, kh, kw) or (O, K)
    w_mode: str  # "f32" | "f16" | "i8" | "i4p" | "i2p" | "b2"   (i2p: only in the split layout, split_codes)
    a_mode: str  # "f32" | "f16" | "u8" | "s8" | "z8" | "b2"   (f16: fp16.py; b2 bit-serial: bitserial.py)
    # z8: asymmetric activations, uint8 codes around a runtime zero point (qp[4]); integer kernels take
    # the correction -z·scale·rowsum(w) folded into their bias (lowering.kernel_arrays)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    epilogue: tuple[str, ...] = ()  # fused ops in order: "relu" | "add" | "silu" | "hardswish" | "sigmoid" | clamp_op()
    a_bits: int = 8  # activation bit width of an integer kernel (u8 codes <= 2**a_bits - 1)
    # int8 dot instructions of the target: "" | "avx2" | "avx512bw" | "avx512vnni" | "sdot" | "i8mm" | "dp4a" | "wmma"
    dot_isa: str = ""
    # zero rows and columns after the input beyond ``padding`` (bottom, right): TF-style "same" padding
    # before a stride-2 conv pads one more at the end than at the start (lowering._folded_pad)
    pad_end: tuple[int, int] = (0, 0)
    # Integer codes between layers. ``codes_in``: the input ``x`` already holds this kernel's activation
    # codes (uint8; int8 for s8), clipped, as its producer's epilogue quantized them, so the kernel does
    # not quantize; ``qp`` still gives the scale. ``codes_out`` ("u8" | "s8"): the epilogue's fp32 value is
    # quantized with the runtime ``qp_out`` (inv_scale, qmin, qmax: the consumer's quantizer) and written
    # as those codes, a quarter of the fp32 output's bytes.
    codes_in: bool = False
    codes_out: str = ""

    def __post_init__(self) -> None:
        if self.codes_in and not (self.integer and self.a_mode in ("u8", "s8", "z8") and not self.bitserial):
            raise ValueError(f"codes_in needs an integer kernel with u8, s8 or z8 activations, not {self}")
        if self.codes_out not in ("", "u8", "s8"):
            raise ValueError(f"codes_out is 'u8', 's8' or '', not {self.codes_out!r}")
        if self.w_mode == "i2p" and not self.split_codes:
            raise ValueError(f"i2p weights (four 2-bit codes a byte) need the split layout of an x86 integer GEMV, "
                             f"not {self}; use i4p")

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """The conv's zero padding as (top, left, bottom, right)."""
        (ph, pw), (eh, ew) = self.padding, self.pad_end
        return ph, pw, ph + eh, pw + ew

    @property
    def padded_hw(self) -> tuple[int, int]:
        """Rows and columns of the zero-padded input of a conv."""
        top, left, bottom, right = self.pads
        return self.x_shape[2] + top + bottom, self.x_shape[3] + left + right

    @property
    def integer(self) -> bool:
        return (self.w_mode in INT_WEIGHT_MODES and self.a_mode in ("u8", "s8", "z8")) or self.bitserial

    @property
    def bitserial(self) -> bool:
        """2-bit weights and activations as bit-planes, reduced with popcounts (bitserial.py)."""
        return self.w_mode == "b2"

    @property
    def k(self) -> int:
        return math.prod(self.w_shape[1:])

    @property
    def kgroup(self) -> int:
        """Reduction elements per lane of the blocked dot: 8 (``[O/16, K/8, 16, 8]`` tiles, the i8mm
        2x16x8 matrix multiply), 4 (``[O/16, K/4, 16, 4]``, the 16x4 dot) where that dot is exact on the
        target, else 2 (the 16x2 layout: the exact ``vpmaddwd`` dot on x86, plain loops elsewhere).

        x86: the 16x4 dot multiplies u8 activations by s8 weights. VNNI's ``vpdpbusd`` adds the four
        products straight into int32: exact for any u8 activation, and for s8 ones shifted into u8
        (:attr:`a_offset`; a LayerNorm's signed outputs feeding a transformer's linear layers). ``vpmaddubsw``
        (AVX-512BW; AVX2 at 256 bits, two a dot) first adds
        product pairs into int16 with saturation, exact only while 2 * amax * |wmax| <= 32767: activations
        of up to 7 bits (2 * 127 * 128 = 32512, the "reduced range" FBGEMM quantizes activations to on such
        CPUs) or 4-bit weights (2 * 255 * 8 = 4080); 8-bit codes against 8-bit weights (65280) saturate.

        aarch64 (:func:`_arm_kgroup`): ``sdot`` adds four s8 x s8 products into each int32 lane, exact
        with no saturation, so s8 activations take it, u8 / z8 ones whose codes fit in s8 (``a_bits`` <=
        7), and 8-bit u8 / z8 ones shifted into s8 (:attr:`a_offset`). i8mm adds ``usdot`` (u8 x s8) and
        ``smmla`` / ``usmmla``: every u8, z8 and s8 activation is exact as it is.

        CUDA's ``dp4a`` (sm_61 on) adds four int8 x int8 (or uint8 x int8) products into int32 with no
        intermediate width at all: exact for every 8-bit activation, signed, unsigned or zero-pointed.

        ``a_bits`` must match the runtime clip (``qp[2]``), which
        :func:`~mpsearch.hardware.lowering.kernel_spec` guarantees."""
        if self.dot_isa in ARM_DOT_ISAS:
            return self._arm_kgroup()
        if self.dot_isa in CUDA_DOT_ISAS:
            tiles = self.integer and self.groups == 1 and self.w_shape[1] % KQUAD == 0
            return KQUAD if tiles and self.a_mode in ("u8", "s8", "z8") else KGROUP
        if not self.integer or self.groups != 1 or self.a_mode not in ("u8", "s8"):
            return KGROUP
        if self.a_mode == "s8":  # VNNI: shifted into u8 (a_offset), exact; vpmaddubsw would saturate on them
            return KQUAD if self.dot_isa == "avx512vnni" and self.w_mode in INT_WEIGHT_MODES else KGROUP
        exact = self.dot_isa == "avx512vnni" or (
            self.dot_isa in SATURATING_DOT_ISAS and (self.a_bits <= 7 or self.w_mode in ("i4p", "i2p")))
        return KQUAD if exact else KGROUP

    def _arm_kgroup(self) -> int:
        """The ARM layouts: 8 where i8mm's ``smmla`` tile of two output positions maps onto the kernel
        (a stride-1 conv with an even output width, whose two neighbouring pixels read 16 contiguous
        input bytes; a linear layer with an even batch), 4 for the other exact ``sdot`` / ``usdot``
        cases, else 2. z8 (zero-point) activations are uint8 codes like u8 (their zero-point correction
        is in the bias), so they take the u8 dots."""
        reduce_dim = self.w_shape[1]
        if not self.integer or self.bitserial or self.groups != 1 or self.a_mode not in ("u8", "s8", "z8") \
                or reduce_dim % KQUAD:
            return KGROUP
        if self.dot_isa == "i8mm":
            pairs = self.stride == (1, 1) and self.out_shape[3] % 2 == 0 if self.op == "conv2d" \
                else self.x_shape[0] % 2 == 0
            return KOCT if pairs and reduce_dim % KOCT == 0 else KQUAD
        return KQUAD  # sdot: s8, 7-bit codes as they are, 8-bit uint8 codes shifted (a_offset)

    @property
    def word_input(self) -> bool:
        """Whether the quantized input of a blocked x86 16x4 conv is stored as 32-bit words, four codes
        of consecutive input channels each (``[N, C/4, H, W]`` uint32, channel ``4c + k`` in byte ``k``),
        instead of ``[N, C/4, H, W, 4]`` bytes. The same bytes in memory, but each word is computed from
        four contiguous NCHW rows with vector shifts and ors, where writing the bytes one channel at a
        time is scalar code. Tuned at 8 trials (one thread of a Sapphire Rapids Xeon): a ResNet-20
        stage-1 conv (16 -> 16, 3x3, 28x28, W8A8) ran 27.7 us with bytes, 10.7 with words;
        EfficientNet-Lite0's 144 -> 24 projection at 56x56 273 -> 119 us, its 192 -> 1152 expansion at
        7x7 123 -> 57. The dot reads each word whole (``vpbroadcastd``) as before
        (:data:`~.intrinsics.DOT4_WORD_INTRINSICS`)."""
        return self.op == "conv2d" and self.dot_isa in X86_DOT_ISAS and self.packed and self.kgroup == KQUAD

    @property
    def unblock(self) -> bool:
        """Whether the blocked accumulator of an x86 conv (``[N, O/16, OH, OW, 16]``: a pixel's 16 output
        channels in one vector) is transposed into NCHW order by its own stage before the epilogue,
        16 channels x a tile of pixels at a time in registers (:func:`~.intrinsics.unblock_intrinsic`),
        so that the epilogue reads and writes whole rows of pixels. Read straight from the blocked
        accumulator, each channel's row of pixels is one insert per pixel. The hand-built recipe at
        fixed seeds, one thread of a Sapphire Rapids Xeon: a 16 -> 96 1x1 conv at 112x112 (its output
        the bound) 500-660 -> 455 us in int8, 620-750 -> 550-590 us in fp32; ResNet-20's 16 -> 16 3x3
        at 28x28 18.3 -> 16.7 us in int8; 1x1 convs on 7x7 and 56x56 maps within 5%."""
        return self.op == "conv2d" and self.dot_isa in X86_DOT_ISAS and (self.packed or self.float_blocked)

    @property
    def tensor_core(self) -> bool:
        """Whether the kernel runs as one GEMM on a CUDA GPU's tensor cores (:mod:`.gemm`: a linear layer
        as it is, a conv through im2col), wmma m16n16k16: int8 x int8 -> int32 for integer kernels
        (int8 or unpacked int4 weights; uint8 activation codes shifted into int8, :attr:`a_offset`), and
        fp16 x fp16 -> fp32 for kernels whose activations are half and whose weights are half or
        integer codes (weight-only int8 / int4: the codes are exact in fp16, the per-channel scale is
        applied to the fp32 sum). The one place that picks the tensor cores over ``__dp4a`` (or the
        CUDA cores' fp16 loops) on a ``"wmma"`` target.

        Taken where the output channels and the reduction (K of a linear layer, ``C * kh * kw`` of a conv)
        are whole 16-tiles: then no multiply-add of the mma is spent on padding in those two dimensions.
        The rows (batch, or batch x output pixels) are padded to 16 by TVM's tensor-core rule: a batch-1
        linear layer uses 1/16 of the tile, which costs nothing that matters, as a GEMV reads every
        weight once and is bound by memory, not by either unit. Channels that do not tile keep the
        blocked ``__dp4a`` dot (:attr:`kgroup`) or the plain loops. Grouped and depthwise convs are
        not GEMMs: plain loops."""
        if self.dot_isa != "wmma" or self.groups != 1 or self.bitserial:
            return False
        integer = self.integer and self.w_mode in ("i8", "i4p")
        half = self.a_mode == "f16" and self.w_mode in ("f16", "i8", "i4p")
        return (integer or half) and self.w_shape[0] % MMA_TILE == 0 and self.k % MMA_TILE == 0

    @property
    def a_offset(self) -> int:
        """What a packed or tensor-core kernel subtracts from its activation codes before the dot: 128
        where 8-bit uint8 codes (u8, z8) meet an s8 x s8 dot, so they fit in s8 (``u - 128``): the
        ``sdot`` of a dotprod-only target, and the tensor cores, whose mma takes both operands of one
        signedness (PTX ``wmma.mma.sync`` ``.s8.s8`` or ``.u8.u8``: no u8 x s8) and TVM registers the s8
        one; conv borders hold the shifted code of 0.0. -128 where s8 codes meet VNNI's u8 x s8
        ``vpdpbusd`` (``s + 128``; conv borders hold 128). 0 elsewhere: the codes go into the dot as they
        are (uint8 codes <= 127 are int8 codes). The int32 accumulator gets ``offset * rowsum(w)`` back
        before it is dequantized (:attr:`acc_offset`)."""
        if self.a_mode == "s8" and self.dot_isa == "avx512vnni" and self.packed and self.kgroup == KQUAD:
            return -128  # s8 codes + 128 are u8 codes for vpdpbusd (u8 x s8); the bias takes 128·rowsum(w) off
        if self.a_mode not in ("u8", "z8") or self.a_bits <= 7:
            return 0
        if self.tensor_core:
            return 128
        return 128 if self.dot_isa == "sdot" and self.packed and self.kgroup == KQUAD else 0

    @property
    def acc_offset(self) -> bool:
        """Whether the kernel takes ``offset``, an int32 per output channel added to the accumulator before
        it is dequantized: ``(a_offset - z) * rowsum(w)`` (:func:`~mpsearch.hardware.lowering.kernel_arrays`),
        which gives back what :attr:`a_offset` took from the codes and takes the zero point ``z`` of z8
        codes off (``sum((q - z) * w) = sum(q * w) - z * rowsum(w)``). Exact in int32: folded into the
        float bias instead it cancels against the accumulator (a shifted s8 linear layer's outputs near
        zero lost 0.4% of their value that way)."""
        return self.integer and (self.a_offset != 0 or self.a_mode == "z8")

    @property
    def packed(self) -> bool:
        """Whether the int8 reduction runs as a blocked dot product: weights packed at prepare time
        into ``[O/16, K/2, 16, 2]`` tiles (conv: ``[O/16, C/2, kh, kw, 16, 2]``; ``/g`` and ``g`` where
        :attr:`kgroup` is 4 or 8), the input quantized into channel groups of that size, so MetaSchedule
        can tensorize the reduction with the target's dot intrinsics (:func:`~.intrinsics.dot_intrinsics_for`).
        Channel counts that do not tile are padded with zero weights (:attr:`o_tiles`, :attr:`k_padded`)
        where that at most doubles the weights (``MAX_PADDING``): a 24-channel projection, a 3-channel stem
        and a 1000-class head take the blocked dot too; a 3-class head keeps the plain layout, and so do
        CUDA's ``dp4a`` kernels, whose schedule assumes whole tiles, and the tensor-core GEMMs
        (:attr:`tensor_core`), which read the weights in their logical order."""
        if not self.integer or self.groups != 1 or self.bitserial or self.tensor_core:
            return False
        plain_gemv = self.x_shape[0] == 1 and self.dot_isa not in X86_DOT_ISAS
        if self.w_mode == "i4p" and self.op == "linear" and (plain_gemv or self.dot_isa in CUDA_DOT_ISAS):
            # An int4 GEMV reads each weight once. x86 blocks it as nibble pairs split in registers by the dot
            # (split_int4; before, each thread unpacked a block of tiles into L1 just before its dot: one thread of a
            # Sapphire Rapids Xeon, 8 trials, 1024 -> 1024 27 us against 260 in the plain layout, W8A8 7.8, fp32 155;
            # 4096 -> 4096 573 against 4,085, W8A8 642; AVX2-only x86 likewise, its dots in 256-bit halves). Elsewhere
            # a GEMV keeps the plain layout, unpacked in the loop (not measured blocked: aarch64's dots). Rows share
            # the unpack: token rows and batches take the blocked dot (x86: 32 x 384 -> 1536, 3.2 ms in the plain
            # layout against 0.1 for int8 blocked; ARM: i8mm's smmla pairs the rows). CUDA's dp4a int4 linears keep
            # the plain layout (never built blocked; tensor cores: tensor_core)
            return False
        if self.dot_isa in CUDA_DOT_ISAS:
            return self.w_shape[0] % LANES == 0 and self.w_shape[1] % KGROUP == 0
        # padding at most doubles the codes (a 4-output, 1-input stem would take 8x): the weights stay
        # smaller than fp32's at any bit width, and the wasted multiply-adds far fewer than the dot saves
        return self.o_tiles * LANES * self.k_padded <= MAX_PADDING * self.w_shape[0] * self.w_shape[1]

    @property
    def depthwise(self) -> bool:
        """An integer depthwise conv (one input channel per output channel) that runs as
        :func:`~mpsearch.hardware.kernels.integer.depthwise_dot`: its input quantized once into rows split
        by column phase (``stride`` of them), so that every tap reads a contiguous run of codes whatever
        the stride. Not on CUDA's ``dp4a`` kernels (their schedule takes the plain layout)."""
        return self.integer and not self.bitserial and self._one_channel_per_group \
            and self.dot_isa not in CUDA_DOT_ISAS

    @property
    def depthwise_in_float(self) -> bool:
        """An integer depthwise conv that stages its codes as fp32 values and sums them with FMAs
        (:func:`~.integer.depthwise_dot`): exact where every partial sum (and the int32 offset) is an
        integer below 2**24 in magnitude, at most 255 x 128 per tap (codes up to 255, weights down to
        -128): up to 256 taps, a 7x7 kernel's 49 about 1.6 M."""
        return self.depthwise and 2 * self.w_shape[2] * self.w_shape[3] * 255 * 128 < 2**24

    @property
    def _one_channel_per_group(self) -> bool:
        """A depthwise conv's shape: one input and one output channel per group."""
        return self.op == "conv2d" and self.groups > 1 and self.groups == self.x_shape[1] == self.w_shape[0] \
            and self.w_shape[1] == 1

    @property
    def float_blocked(self) -> bool:
        """An fp32 convolution (groups 1) or linear layer on an x86 target (AVX2 or AVX-512), run as
        :func:`~.integer.float_blocked_conv`: weights prepacked ``[O/16, C, kh, kw, 16]`` (linear:
        ``[O/16, K, 16]``, its rows playing the pixels; output channels padded with zero weights to whole
        16-lane tiles where that at most doubles them, ``MAX_PADDING``), so that the hand-built schedule
        (:func:`~.schedules.schedule_float_conv`) keeps a tile of pixels x 16 output channels of fp32
        accumulators in vector registers, one weight vector and one broadcast input per FMA. TVM's
        generic NCHW conv, tuned at a run's few trials, reached ~30 GFLOP/s on EfficientNet-Lite0's 1x1
        convs on a VNNI EPYC (one thread), and ~32 GFLOP/s on MiniLM's linear layers at 128 tokens.
        Other targets keep topi's conv and the plain matmul."""
        return self.w_mode == "f32" and self.a_mode == "f32" and self.groups == 1 \
            and self.dot_isa in X86_DOT_ISAS and self.o_tiles * LANES <= MAX_PADDING * self.w_shape[0]

    @property
    def float_depthwise(self) -> bool:
        """An fp32 depthwise conv on an x86 target (AVX2 or AVX-512): the phase-split input of
        :func:`~.integer.depthwise_dot` (contiguous reads for every tap, any stride) with float values and
        the same hand-built schedule as the integer one."""
        return self.w_mode == "f32" and self.a_mode == "f32" and self._one_channel_per_group \
            and self.dot_isa in X86_DOT_ISAS

    @property
    def o_tiles(self) -> int:
        """Output-channel tiles of 16 lanes of a ``packed`` kernel (the last padded with zero weights)."""
        return -(-self.w_shape[0] // LANES)

    @property
    def k_padded(self) -> int:
        """The reduction length (input channels of a conv, K of a linear) of a ``packed`` kernel, rounded up
        to :attr:`kgroup` (:attr:`split_codes` of them for a split layout): the padded inputs are read as
        code 0 against zero weights."""
        g = self.kgroup * (self._codes_per_byte if self._split_shape else 1)
        return -(-self.w_shape[1] // g) * g

    @property
    def split_codes(self) -> int:
        """Codes a weight byte holds in the split layout of an int4 (2) or int2 (4) GEMV (one row) on
        an x86 target (AVX2 or AVX-512); 0 where the kernel does not take it. Byte ``(t, j, i, k)`` holds lane
        ``16t + i``'s codes of inputs ``4(cj + h) + k`` in its bit field ``h`` (of ``8 / c`` bits, the
        low field first), each code stored + ``2**(bits - 1)``: ``c`` 16x4 tiles in one. One 64-byte
        load is then all ``c`` tiles, split in registers (shift, ``&``, ``-``) by the dot intrinsic
        itself (:data:`~.intrinsics.SPLIT_DOT_INTRINSICS`): nothing is unpacked to memory. A GEMV reads
        each weight once, so it is bound by the weight traffic when nothing else is in its way: with
        the unpacked tiles going through a buffer, the int4 unpack was the bound (one thread of a
        Sapphire Rapids Xeon: 4096 -> 4096 W4A8 573 us, W8A8 642). Batches and token rows keep the
        buffered unpack of packed int4 (each unpacked tile then serves every row), and 2-bit weights
        there stay int4 codes (``i4p``)."""
        return self._codes_per_byte if self._split_shape and self.packed else 0

    @property
    def split_int4(self) -> bool:
        """An int4 GEMV in the split layout (:attr:`split_codes` 2: nibble pairs of two 16x4 tiles)."""
        return self.split_codes == 2

    @property
    def _codes_per_byte(self) -> int:
        return {"i4p": 2, "i2p": 4}.get(self.w_mode, 0)

    @property
    def _split_shape(self) -> bool:
        """:attr:`split_codes` but for :attr:`packed`, which depends on :attr:`k_padded`, which depends on this."""
        return (self._codes_per_byte > 0 and self.op == "linear" and self.x_shape[0] == 1
                and self.dot_isa in X86_DOT_ISAS and self.kgroup == KQUAD)  # x86 KQUAD: integer kernels only

    @property
    def weight_padding_bytes(self) -> int:
        """Bytes the stored weight array holds beyond the layer's own codes: the zero output lanes and
        inputs of a ``packed`` kernel whose channels do not tile (0 where they do)."""
        if self.float_blocked:
            return 4 * (math.prod(self.stored_weight_shape()) - math.prod(self.w_shape))
        if not self.packed:
            return 0
        per_ch = math.prod(self.w_shape[1:])
        codes = self.w_shape[0] * -(-per_ch // max(self._codes_per_byte, 1))
        return math.prod(self.stored_weight_shape()) - codes

    def dot_tile_shape(self) -> tuple[int, ...]:
        """The blocked int8 weight layout of a ``packed`` kernel."""
        g = self.kgroup
        if self.split_codes:  # split_codes tiles' codes in the bit fields of one byte tile
            return (self.o_tiles, self.k_padded // (self.split_codes * g), LANES, g)
        if self.op == "linear":
            return (self.o_tiles, self.k_padded // g, LANES, g)
        _, _, kh, kw = self.w_shape
        return (self.o_tiles, self.k_padded // g, kh, kw, LANES, g)

    def stored_weight_shape(self) -> tuple[int, ...]:
        """int4 weights keep the blocked layout with each lane's code pair in one byte (a 16x4 tile
        ``[..., 16, 4]`` is stored ``[..., 16, 2]``). Bit-serial weights: two packed bit-planes."""
        if self.bitserial:
            return bitserial_weight_shape(self.w_shape)
        if self.float_blocked:
            return (self.o_tiles, *self.w_shape[1:], LANES)
        if self.packed:
            tiles = self.dot_tile_shape()
            if self.w_mode == "i4p" and not self.split_codes:
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
        h, w = self.padded_hw
        kh, kw = self.w_shape[2:]
        oh = (h - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        ow = (w - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        return (n, o, oh, ow)

    def inputs(self) -> list[tuple[str, tuple[int, ...], str]]:
        """``(name, shape, dtype)`` of the kernel's inputs, in call order (output excluded)."""
        o = self.w_shape[0]
        w_dtype = {"f32": "float32", "f16": "float16", "i8": "int8", "i4p": "uint8", "i2p": "uint8",
                   "b2": f"uint{bitserial_word_bits(self.w_shape[1])}"}[self.w_mode]
        x_dtype = ("int8" if self.a_mode == "s8" else "uint8") if self.codes_in else "float32"
        args = [("x", self.x_shape, x_dtype), ("w", self.stored_weight_shape(), w_dtype)]
        if self.w_mode in (*INT_WEIGHT_MODES, "b2"):
            args.append(("scale", (o,), "float32"))
        args.append(("bias", (o,), "float32"))
        if self.acc_offset:
            args.append(("offset", (o,), "int32"))
        if self.a_mode in ("u8", "s8", "b2"):
            args.append(("qp", (4,), "float32"))  # inv_scale, qmin, qmax, scale
        elif self.a_mode == "z8":
            args.append(("qp", (5,), "float32"))  # inv_scale, qmin, qmax, scale, zero point
        args += [(f"res{i}", self.out_shape, "float32") for i, e in enumerate(self.epilogue) if e == "add"]
        if self.codes_out:
            args.append(("qp_out", (3,), "float32"))  # the consumer's inv_scale, qmin, qmax
        return args

    def flops(self) -> int:
        return 2 * math.prod(self.out_shape) * (self.k if self.op == "conv2d" else self.w_shape[1])


def clamp_op(lo: float | None, hi: float | None) -> str:
    """The epilogue op clamping to ``[lo, hi]`` (None: unbounded on that side), e.g. ReLU6's ``clamp:0.0:6.0``."""
    def bound(v: float | None) -> str:
        return "" if v is None else repr(float(v))

    return f"clamp:{bound(lo)}:{bound(hi)}"


def clamp_bounds(op: str) -> tuple[float | None, float | None]:
    """The bounds of a :func:`clamp_op` string (ValueError for any other op)."""
    kind, lo, hi = op.split(":") if op.count(":") == 2 else (op, "", "")
    if kind != "clamp":
        raise ValueError(f"unknown epilogue op {op!r}")
    return (float(lo) if lo else None), (float(hi) if hi else None)


__all__ = ["ARM_DOT_ISAS", "CUDA_DOT_ISAS", "INT_WEIGHT_MODES", "KGROUP", "KOCT", "KQUAD", "KernelSpec", "LANES",
           "MMA_TILE", "OPAQUE", "SATURATING_DOT_ISAS", "UNPACK_RULE", "X86_DOT_ISAS", "clamp_bounds", "clamp_op"]
