"""mpsearch's own tensor intrinsics for the blocked int8 dot (imports TVM: load lazily), and which of
them a target can run."""

from __future__ import annotations

from typing import Any

from tvm import tirx

from mpsearch.hardware.kernels.codes import field_code
from mpsearch.hardware.kernels.spec import CUDA_DOT_ISAS, KGROUP, KOCT, KQUAD, LANES, UNPACK_RULE

# -- the int8 dot product as a tensor intrinsic ---------------------------------------------------
#
# 16 output lanes x 2 reduction elements per call: the int8 weight pairs are sign-extended to int16
# and multiplied against the broadcast activation pair with one ``vpmaddwd`` (AVX-512BW), which adds
# each product pair straight into int32. Unlike TVM's ``dot_16x4_avx512`` (``vpmaddubsw``), nothing
# saturates at int16 (255 * 127 * 2 > 32767), so the kernels stay exact for 8-bit activations and
# weights, and signed activations need no zero-point compensation.

DOT_INTRINSICS = {"u8": "mpsearch_dot_16x2_u8s8_avx512", "s8": "mpsearch_dot_16x2_s8s8_avx512"}
# The same 16x2 dot on AVX2-only x86 (AMD Zen 2 / 3, Intel before AVX-512): the 16 lanes as two 256-bit
# halves, ``vpmaddwd`` on each (AVX-512 has the one 512-bit instruction).
AVX2_DOT_INTRINSICS = {"u8": "mpsearch_dot_16x2_u8s8_avx2", "s8": "mpsearch_dot_16x2_s8s8_avx2"}
# 16 lanes x 4 reduction elements (u8 x s8 only), used where KernelSpec.kgroup says it is exact. TVM's
# dot_16x4_avx512 / dot_16x4_vnni (description and code; vpdpbusd's operands retyped for LLVM >= 21),
# registered under mpsearch's names so that replaying a tuned schedule needs no import of
# tvm.s_tir.tensor_intrin (~60 s: every target's intrinsics) and keeps working with TVM's VNNI one broken.
DOT4_INTRINSICS = {"avx512bw": "mpsearch_dot_16x4_u8s8_avx512", "avx512vnni": "mpsearch_dot_16x4_u8s8_vnni",
                   "avx2": "mpsearch_dot_16x4_u8s8_avx2"}
# The same dots reading their four codes as one uint32 word (KernelSpec.word_input: the blocked convs'
# input, quantized a row of words at a time), its byte k the code of channel 4c + k.
DOT4_WORD_INTRINSICS = {"avx512bw": "mpsearch_dot_16x4w_u8s8_avx512", "avx512vnni": "mpsearch_dot_16x4w_u8s8_vnni",
                        "avx2": "mpsearch_dot_16x4w_u8s8_avx2"}
# An x86 int4 / int2 GEMV's dot (KernelSpec.split_codes c = 2 / 4), keyed (dot_isa, c): 16 lanes x 4c
# reduction elements, one 64-byte load of c bit fields split in registers into c 16x4 tiles of int8 codes,
# then the 16x4 dot on each.
SPLIT_DOT_INTRINSICS = {
    ("avx512bw", 2): "mpsearch_dot_16x8n_u8i4_avx512", ("avx512vnni", 2): "mpsearch_dot_16x8n_u8i4_vnni",
    ("avx512bw", 4): "mpsearch_dot_16x16c_u8i2_avx512", ("avx512vnni", 4): "mpsearch_dot_16x16c_u8i2_vnni",
    ("avx2", 2): "mpsearch_dot_16x8n_u8i4_avx2", ("avx2", 4): "mpsearch_dot_16x16c_u8i2_avx2"}
# aarch64 (KernelSpec._arm_kgroup says which kernels take which): the 16x4 dot as four 4-lane
# ``sdot``s / ``usdot``s over the same [16, 4] tiles as x86, and i8mm's 2x16x8 tile as eight 2x2
# ``smmla``s / ``usmmla``s. "u7" is the sdot on uint8 codes <= 127 (a_bits <= 7), read as int8 bytes;
# 8-bit uint8 codes reach the s8 one shifted by -128 (KernelSpec.a_offset).
ARM_DOT4_INTRINSICS = {"sdot": {"s8": "mpsearch_dot_16x4_s8s8_sdot", "u8": "mpsearch_dot_16x4_u7s8_sdot"},
                       "i8mm": {"s8": "mpsearch_dot_16x4_s8s8_sdot", "u8": "mpsearch_dot_16x4_u8s8_usdot"}}
MMLA_INTRINSICS = {"s8": "mpsearch_mmla_2x16x8_s8s8_smmla", "u8": "mpsearch_mmla_2x16x8_u8s8_usmmla"}
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


HALF = LANES // 2  # int32 lanes of a 256-bit vector: an AVX2 dot updates its 16 lanes in two halves


def _in_halves(desc: tirx.PrimFunc, half: Any) -> tirx.PrimFunc:
    """The AVX2 implementation of dot description ``desc`` (buffers read in the order C, A, B): lanes
    ``8h .. 8h + 7`` of C set to ``half(A, B, C, h)`` for h = 0, 1, two 256-bit stores."""
    from tvm.s_tir import SBlock, SBlockRealize

    root = desc.body.block
    C, A, B = (region.source for region in root.reads)  # the description's own buffers
    stores = [tirx.BufferStore(C, half(A, B, C, h), [tirx.Ramp(h * HALF, 1, HALF)]) for h in range(2)]
    block = SBlock([], root.reads, root.writes, root.name_hint, tirx.SeqStmt(stores))
    return desc.with_body(SBlockRealize([], True, block))


def _reinterpret(dtype: str, value: Any) -> Any:
    return tirx.call_intrin(dtype, "tirx.reinterpret", value)


def _avx2_madd(pairs: Any) -> Any:
    """``vpmaddwd`` of 16 int16 pair sums against ones: their 8 int32 pair sums."""
    return tirx.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", pairs,
                                      tirx.Broadcast(tirx.const(1, "int16"), 2 * HALF))


def _avx2_dot_intrinsic(a_dtype: str) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    """:func:`_dot_intrinsic` on AVX2: each half's int8 weight pairs sign-extended to int16 and multiplied
    against the broadcast activation pair by one 256-bit ``vpmaddwd``."""

    def half(A: Any, B: Any, C: Any, h: int) -> Any:
        pair = _reinterpret("int32", tirx.Cast("int16x2", A.vload([0], f"{a_dtype}x2")))
        a16 = _reinterpret("int16x16", tirx.Broadcast(pair, HALF))
        b16 = tirx.Cast("int16x16", B.vload([h * HALF, 0], "int8x16"))
        return C.vload([h * HALF], "int32x8") + tirx.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd",
                                                                            b16, a16)

    desc = _dot_desc(KGROUP, a_dtype)
    return desc, _in_halves(desc, half)


def _avx2_dot4_intrinsic(word: bool) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    """:func:`_dot4_intrinsic`'s vpmaddubsw dot on AVX2: per half, one 256-bit ``vpmaddubsw`` (u8 x s8
    pairs into int16, saturating: exact where :attr:`~.spec.KernelSpec.kgroup` takes it) and one
    ``vpmaddwd`` against ones into int32."""

    def half(A: Any, B: Any, C: Any, h: int) -> Any:
        quad = _reinterpret("int32", A.vload([0], "uint32") if word else A.vload([0], "uint8x4"))
        a8 = _reinterpret("uint8x32", tirx.Broadcast(quad, HALF))
        pairs = tirx.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", a8,
                                           B.vload([h * HALF, 0], "int8x32"))
        return C.vload([h * HALF], "int32x8") + _avx2_madd(pairs)

    desc = _dot4_word_desc() if word else _dot_desc(KQUAD, "uint8")
    return desc, _in_halves(desc, half)


def _dot4_intrinsic(isa: str, word: bool = False) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    """The x86 16x4 dot of ``isa``; ``word``: its four codes read as one uint32 word
    (:data:`DOT4_WORD_INTRINSICS`), else as four bytes."""
    from tvm.script import tirx as T
    from tvm.target import codegen

    # LLVM 21 retyped vpdpbusd's byte operands from <16 x i32> to <64 x i8> (TVM 0.27's own
    # dot_16x4_vnni still passes i32 vectors and fails LLVM 22's verifier)
    operand = "int8x64" if codegen.llvm_version_major() >= 21 else "int32x16"
    a_len, a_dtype, a_read = (1, "uint32", "uint32") if word else (KQUAD, "uint8", "uint8x4")

    @T.prim_func(s_tir=True)
    def vnni(a: T.handle, b: T.handle, c: T.handle) -> None:  # vpdpbusd: the four products into int32
        A = T.match_buffer(a, (a_len,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (LANES, KQUAD), "int8", offset_factor=1)
        C = T.match_buffer(c, (LANES,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:a_len], B[0:LANES, 0:KQUAD])
            T.writes(C[0:LANES])
            quad = T.reinterpret(A.vload([0], a_read), dtype="int32")
            C[T.ramp(T.int32(0), 1, LANES)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), C.vload([0], dtype="int32x16"),
                T.reinterpret(T.broadcast(quad, LANES), dtype=operand),
                T.reinterpret(B.vload([0, 0], dtype="int8x64"), dtype=operand), dtype="int32x16")

    @T.prim_func(s_tir=True)
    def avx512(a: T.handle, b: T.handle, c: T.handle) -> None:  # vpmaddubsw (saturating s16 pairs), vpmaddwd
        A = T.match_buffer(a, (a_len,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (LANES, KQUAD), "int8", offset_factor=1)
        C = T.match_buffer(c, (LANES,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:a_len], B[0:LANES, 0:KQUAD])
            T.writes(C[0:LANES])
            quad = T.reinterpret(A.vload([0], a_read), dtype="int32")
            a8 = T.reinterpret(T.broadcast(quad, LANES), dtype="uint8x64")
            pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pmaddubs.w.512"),
                                            a8, B.vload([0, 0], dtype="int8x64"), dtype="int16x32")
            C[T.ramp(T.int32(0), 1, LANES)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pmaddw.d.512"), pairs, T.int16x32(1),
                dtype="int32x16")

    return _dot4_word_desc() if word else _dot_desc(KQUAD, "uint8"), vnni if isa == "avx512vnni" else avx512


def _split_dot_intrinsic(isa: str, codes: int) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    """The 16x4 dot of ``isa`` on ``codes`` tiles in the bit fields of one byte tile
    (:data:`SPLIT_DOT_INTRINSICS`): ``C[i] += sum_h sum_k A[4h + k] * code(B[i, k], field h)``. One load of
    the 64 packed bytes; shifts and ``&`` give each tile's codes + ``2**(bits - 1)``, ``-`` the int8 codes,
    and each tile goes through the dot with its own broadcast quad: VNNI's ``vpdpbusd`` ``codes`` times;
    AVX-512BW's ``vpmaddubsw`` ``codes`` times (u8 x int4 pair sums are at most 2 * 255 * 8 = 4080, four
    tiles' u8 x int2 ones 4 * 2 * 255 * 2 = 4080, so neither they nor their sum saturate int16), then one
    ``vpmaddwd`` into int32. (Taking the offset off once per row with the sum of the row's input codes
    instead, and extracting the 2-bit fields with GFNI's ``vgf2p8affineqb``, measured no faster on a
    Zen 4: the dots themselves bound these kernels there.)"""
    from tvm.s_tir import SBlock, SBlockRealize
    from tvm.script import tirx as T
    from tvm.target import codegen

    operand = "int8x64" if codegen.llvm_version_major() >= 21 else "int32x16"  # see _dot4_intrinsic
    n, bits = LANES * KQUAD, 8 // codes

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (codes * KQUAD,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (LANES, KQUAD), "uint8", offset_factor=1)
        C = T.match_buffer(c, (LANES,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:codes * KQUAD], B[0:LANES, 0:KQUAD])
            T.writes(C[0:LANES])
            for i, h, j in T.grid(LANES, codes, KQUAD):
                with T.sblock("update"):
                    vi, vh, vj = T.axis.remap("SRR", [i, h, j])
                    C[vi] = C[vi] + T.Cast("int32", A[vh * KQUAD + vj]) * T.Cast(
                        "int32", field_code(B[vi, vj], vh, bits))

    def tiles(B: Any, row: int = 0, n: int = n) -> list[Any]:  # the tiles' int8 codes, n bytes from lane row
        v = B.vload([row, 0], dtype=f"uint8x{n}")
        mask = tirx.Broadcast(tirx.const((1 << bits) - 1, "uint8"), n)
        offset = tirx.Broadcast(tirx.const(1 << (bits - 1), "int8"), n)
        fields = [tirx.bitwise_and(v, mask)]
        fields += [tirx.shift_right(v, tirx.Broadcast(tirx.const(bits * h, "uint8"), n)) for h in range(1, codes)]
        fields[1:-1] = [tirx.bitwise_and(f, mask) for f in fields[1:-1]]  # the top field needs no mask
        return [tirx.call_intrin(f"int8x{n}", "tirx.reinterpret", f) - offset for f in fields]

    def quad(A: Any, h: int, lanes: int = LANES) -> Any:  # the broadcast input quad of tile h
        return tirx.Broadcast(tirx.call_intrin("int32", "tirx.reinterpret", A.vload([h * KQUAD], "uint8x4")), lanes)

    def half(A: Any, B: Any, C: Any, r: int) -> Any:  # AVX2: lanes 8r .. 8r + 7, 256-bit vpmaddubsw / vpmaddwd
        pairs = [tirx.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw",
                                            _reinterpret("uint8x32", quad(A, h, HALF)), w)
                 for h, w in enumerate(tiles(B, r * HALF, n // 2))]
        return C.vload([r * HALF], "int32x8") + _avx2_madd(sum(pairs[1:], pairs[0]))

    def update(A: Any, B: Any, C: Any) -> Any:  # the lanes' new int32 values
        acc = C.vload([0], dtype="int32x16")
        if isa == "avx512vnni":  # vpdpbusd: the four products of each lane into int32
            for h, w in enumerate(tiles(B)):
                acc = tirx.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", acc,
                                                 tirx.call_intrin(operand, "tirx.reinterpret", quad(A, h)),
                                                 tirx.call_intrin(operand, "tirx.reinterpret", w))
            return acc
        pairs = [tirx.call_llvm_pure_intrin("int16x32", "llvm.x86.avx512.pmaddubs.w.512",
                                            tirx.call_intrin("uint8x64", "tirx.reinterpret", quad(A, h)), w)
                 for h, w in enumerate(tiles(B))]
        return acc + tirx.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.pmaddw.d.512", sum(pairs[1:], pairs[0]),
                                                tirx.Broadcast(tirx.const(1, "int16"), 32))

    if isa == "avx2":
        return desc, _in_halves(desc, half)
    root = desc.body.block
    C, A, B = (region.source for region in root.reads)  # the description's own buffers
    store = tirx.BufferStore(C, update(A, B, C), [tirx.Ramp(0, 1, LANES)])
    return desc, desc.with_body(SBlockRealize([], True, SBlock([], root.reads, root.writes, root.name_hint, store)))


def _dot4_word_desc() -> tirx.PrimFunc:
    """What the word 16x4 dots compute: :func:`_dot_desc` with the four codes the bytes of one uint32
    word (byte ``k``: reduction element ``k``), as :func:`~.integer.word_byte` reads them."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (1,), "uint32", offset_factor=1)
        B = T.match_buffer(b, (LANES, KQUAD), "int8", offset_factor=1)
        C = T.match_buffer(c, (LANES,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:1], B[0:LANES, 0:KQUAD])
            T.writes(C[0:LANES])
            for i in T.serial(0, LANES):
                for j in T.serial(0, KQUAD):
                    with T.sblock("update"):
                        vi, vj = T.axis.remap("SR", [i, j])
                        C[vi] = C[vi] + T.Cast("int32", T.bitwise_and(T.shift_right(A[0], T.Cast("uint32", vj * 8)),
                                                                      T.uint32(255))) * T.Cast("int32", B[vi, vj])

    return desc


def _arm_dot4_intrinsic(name: str) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    """16 lanes x 4: four ``sdot`` / ``usdot`` (each: 4 int32 lanes += 4 products of 8-bit pairs,
    no saturation) against the broadcast activation quad. The ``[16, 4]`` weight tile is the four
    16-byte operands in order."""
    from tvm.script import tirx as T

    a_dtype = "int8" if "_s8s8_" in name else "uint8"
    instr, bytes_ = ("usdot", "uint8x16") if name.endswith("_usdot") else ("sdot", "int8x16")
    llvm_name = f"llvm.aarch64.neon.{instr}.v4i32.v16i8"

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (KQUAD,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (LANES, KQUAD), "int8", offset_factor=1)
        C = T.match_buffer(c, (LANES,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:KQUAD], B[0:LANES, 0:KQUAD])
            T.writes(C[0:LANES])
            quad = T.reinterpret(A.vload([0], a_dtype + "x4"), dtype="int32")
            a16 = T.reinterpret(T.broadcast(quad, 4), dtype=bytes_)
            for q in T.serial(0, 4):
                C[T.ramp(q * 4, 1, 4)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm_name), C.vload([q * 4], dtype="int32x4"), a16,
                    B.vload([q * 4, 0], dtype="int8x16"), dtype="int32x4")

    return _dot_desc(KQUAD, a_dtype), impl


def _mmla_intrinsic(a_mode: str) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    """Two output positions x 16 lanes x 8: ``C[p, l] += sum_k A[p, k] * B[l, k]`` as eight
    ``smmla`` / ``usmmla`` (2x8 by 8x2 int8 into a 2x2 int32 tile, no saturation), one per lane pair.
    The two positions' rows (A, C) may lie apart (a linear layer's batch rows); a lane pair's weights
    are 16 contiguous bytes of the ``[16, 8]`` tile."""
    from tvm.script import tirx as T

    a_dtype = "int8" if a_mode == "s8" else "uint8"
    llvm_name = f"llvm.aarch64.neon.{'smmla' if a_mode == 's8' else 'usmmla'}.v4i32.v16i8"

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (2, KOCT), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (LANES, KOCT), "int8", offset_factor=1)
        C = T.match_buffer(c, (2, LANES), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:2, 0:LANES], A[0:2, 0:KOCT], B[0:LANES, 0:KOCT])
            T.writes(C[0:2, 0:LANES])
            for p, i, j in T.grid(2, LANES, KOCT):
                with T.sblock("update"):
                    vp, vi, vj = T.axis.remap("SSR", [p, i, j])
                    C[vp, vi] = C[vp, vi] + T.cast(A[vp, vj], "int32") * T.cast(B[vi, vj], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (2, KOCT), a_dtype, offset_factor=1, strides=[T.int32(), 1])
        B = T.match_buffer(b, (LANES, KOCT), "int8", offset_factor=1)
        C = T.match_buffer(c, (2, LANES), "int32", offset_factor=1, strides=[T.int32(), 1])
        with T.sblock("root"):
            T.reads(C[0:2, 0:LANES], A[0:2, 0:KOCT], B[0:LANES, 0:KOCT])
            T.writes(C[0:2, 0:LANES])
            rows = T.vectorcombine(A.vload([0, 0], a_dtype + "x8"), A.vload([1, 0], a_dtype + "x8"),
                                   dtype=a_dtype + "x16")
            for q in T.serial(0, LANES // 2):
                # the 2x2 tile, row-major: C[0, 2q:2q+2] then C[1, 2q:2q+2]
                tile = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm_name),
                    T.vectorcombine(C.vload([0, q * 2], "int32x2"), C.vload([1, q * 2], "int32x2"), dtype="int32x4"),
                    rows, B.vload([q * 2, 0], dtype="int8x16"), dtype="int32x4")
                C[0, T.ramp(q * 2, 1, 2)] = T.vectorlow(tile, dtype="int32x2")
                C[1, T.ramp(q * 2, 1, 2)] = T.vectorhigh(tile, dtype="int32x2")

    return desc, impl


def unblock_intrinsic(rows: int, dtype: str) -> str:
    """Name of the intrinsic that transposes ``rows`` (2-16) pixels' accumulators of 16 output-channel
    lanes (``[rows, 16]``, ``dtype`` int32 or float32) into 16 channel rows of ``rows`` pixels of an NCHW
    output (:attr:`KernelSpec.unblock`)."""
    return f"mpsearch_unblock_{rows}x{LANES}_{dtype}"


def _interleave(lo: bool) -> list[int]:
    """Indices of a two-vector shuffle that interleaves the low (high) halves of two 16-lane vectors."""
    half = LANES // 2
    base = 0 if lo else half
    return [i for k in range(half) for i in (base + k, LANES + base + k)]


def _unblock_intrinsic(rows: int, dtype: str) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    """The ``[rows, 16] -> [16, rows]`` transpose in registers: the rows loaded as 16-lane vectors (zeros
    past ``rows``), then four rounds of pairing vector ``i`` with ``i + 8`` into the interleaves of their
    low and high halves. Each round rotates the 8-bit (row, lane) index of every element left by one bit,
    so four rounds swap row and lane: 64 two-source shuffles (``vpermt2d`` / ``vpermt2ps``) for 16 x 16
    elements, where reading each channel's pixels out of the blocked accumulator is one insert per
    element."""
    from tvm.s_tir import SBlock, SBlockRealize
    from tvm.script import tirx as T

    lo, hi = _interleave(True), _interleave(False)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, c: T.handle) -> None:
        stride = T.int32()
        A = T.match_buffer(a, (rows, LANES), dtype, offset_factor=1)
        C = T.match_buffer(c, (LANES, rows), dtype, strides=[stride, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads(A[0:rows, 0:LANES])
            T.writes(C[0:LANES, 0:rows])
            for i, j in T.grid(LANES, rows):
                with T.sblock("unblock"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    C[vi, vj] = A[vj, vi]

    vectors = [tirx.BufferLoad(desc.params[0], [r, tirx.Ramp(0, 1, LANES)]) for r in range(rows)]
    vectors += [tirx.Broadcast(tirx.const(0, dtype), LANES)] * (LANES - rows)
    for _ in range(LANES.bit_length() - 1):  # log2(16) rounds
        vectors = [tirx.Shuffle([vectors[i], vectors[i + LANES // 2]], idx)
                   for i in range(LANES // 2) for idx in (lo, hi)]
    out = desc.params[1]
    stores = [tirx.BufferStore(out, v if rows == LANES else tirx.Shuffle([v], list(range(rows))),
                               [i, tirx.Ramp(0, 1, rows)]) for i, v in enumerate(vectors)]
    root = desc.body.block
    block = SBlock([], root.reads, root.writes, root.name_hint, tirx.SeqStmt(stores))
    impl = desc.with_body(SBlockRealize([], True, block))
    return desc, impl


def unpack_intrinsic(group: int) -> str:
    """Name of the intrinsic that unpacks a 16-lane tile of int4 weights, ``group`` (2, 4 or 8) codes a
    lane in ``group / 2`` bytes (low nibble first, each code stored + 8), into the ``[16, group]`` int8
    tile the dot reads (:func:`~.integer.packed_dot`'s ``unpack_int4``)."""
    return f"mpsearch_unpack_int4_{LANES}x{group}"


def _unpack_intrinsic(group: int) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    """The int4 unpack in registers: the tile's ``8 * group`` bytes as one vector, its low and high nibbles
    (``& 15``, ``>> 4``) interleaved by one two-source shuffle, then ``- 8`` on the int8 bytes. Vectorized over the tile as a plain loop, the
    byte index ``k // 2`` of code ``k`` made each code a scalar load, shift and insert."""
    from tvm.s_tir import SBlock, SBlockRealize
    from tvm.script import tirx as T

    n = LANES * group // 2  # packed bytes
    shape = (LANES,) if group == KGROUP else (LANES, group // 2)

    if group == KGROUP:
        @T.prim_func(s_tir=True)
        def desc(p: T.handle, w: T.handle) -> None:  # one byte a lane: packed_dot's g == KGROUP form
            P = T.match_buffer(p, shape, "uint8", offset_factor=1)
            W = T.match_buffer(w, (LANES, group), "int8", offset_factor=1)
            with T.sblock("root"):
                T.reads(P[0:LANES])
                T.writes(W[0:LANES, 0:group])
                for i, j in T.grid(LANES, group):
                    with T.sblock("unpack_int4"):
                        vi, vj = T.axis.remap("SS", [i, j])
                        W[vi, vj] = T.Cast("int8", T.bitwise_and(T.shift_right(T.Cast("int32", P[vi]), vj * 4), 15)
                                           - 8)
    else:
        @T.prim_func(s_tir=True)
        def desc(p: T.handle, w: T.handle) -> None:  # a lane's codes in group / 2 bytes
            P = T.match_buffer(p, shape, "uint8", offset_factor=1)
            W = T.match_buffer(w, (LANES, group), "int8", offset_factor=1)
            with T.sblock("root"):
                T.reads(P[0:LANES, 0:group // 2])
                T.writes(W[0:LANES, 0:group])
                for i, j in T.grid(LANES, group):
                    with T.sblock("unpack_int4"):
                        vi, vj = T.axis.remap("SS", [i, j])
                        W[vi, vj] = T.Cast("int8", T.bitwise_and(
                            T.shift_right(T.Cast("int32", P[vi, vj // 2]), T.floormod(vj, 2) * 4), 15) - 8)

    packed, out = desc.params
    v = tirx.BufferLoad(packed, [tirx.Ramp(0, 1, n)] if group == KGROUP else [0, tirx.Ramp(0, 1, n)])
    lo = tirx.bitwise_and(v, tirx.Broadcast(tirx.const(15, "uint8"), n))
    hi = tirx.shift_right(v, tirx.Broadcast(tirx.const(4, "uint8"), n))
    codes = tirx.Shuffle([lo, hi], [i for k in range(n) for i in (k, n + k)])
    codes = tirx.call_intrin(f"int8x{2 * n}", "tirx.reinterpret", codes) - tirx.Broadcast(tirx.const(8, "int8"), 2 * n)
    store = tirx.BufferStore(out, codes, [0, tirx.Ramp(0, 1, 2 * n)])
    root = desc.body.block
    impl = desc.with_body(SBlockRealize([], True, SBlock([], root.reads, root.writes, root.name_hint, store)))
    return desc, impl


def register_intrinsics() -> None:
    """Register every intrinsic of this module with TVM, x86 and aarch64 alike (idempotent; which a
    target may use is :func:`dot_intrinsics_for`'s choice). Needed wherever a tuned schedule that uses
    them is replayed, not only while tuning."""
    global _registered
    if _registered:
        return
    from tvm.s_tir import TensorIntrin

    for a_mode, name in DOT_INTRINSICS.items():
        if TensorIntrin.get(name, allow_missing=True) is None:
            TensorIntrin.register(name, *_dot_intrinsic("uint8" if a_mode == "u8" else "int8"))
    for a_mode, name in AVX2_DOT_INTRINSICS.items():
        if TensorIntrin.get(name, allow_missing=True) is None:
            TensorIntrin.register(name, *_avx2_dot_intrinsic("uint8" if a_mode == "u8" else "int8"))
    for word, names in ((False, DOT4_INTRINSICS), (True, DOT4_WORD_INTRINSICS)):
        for isa, name in names.items():
            if TensorIntrin.get(name, allow_missing=True) is None:
                TensorIntrin.register(name, *(_avx2_dot4_intrinsic(word) if isa == "avx2"
                                              else _dot4_intrinsic(isa, word=word)))
    for (isa, codes), name in SPLIT_DOT_INTRINSICS.items():
        if TensorIntrin.get(name, allow_missing=True) is None:
            TensorIntrin.register(name, *_split_dot_intrinsic(isa, codes))
    for group in (KGROUP, KQUAD, KOCT):
        if TensorIntrin.get(unpack_intrinsic(group), allow_missing=True) is None:
            TensorIntrin.register(unpack_intrinsic(group), *_unpack_intrinsic(group))
    for rows in range(2, LANES + 1):
        for dtype in ("int32", "float32"):
            if TensorIntrin.get(unblock_intrinsic(rows, dtype), allow_missing=True) is None:
                TensorIntrin.register(unblock_intrinsic(rows, dtype), *_unblock_intrinsic(rows, dtype))
    for name in {n for by_mode in ARM_DOT4_INTRINSICS.values() for n in by_mode.values()}:
        if TensorIntrin.get(name, allow_missing=True) is None:
            TensorIntrin.register(name, *_arm_dot4_intrinsic(name))
    for a_mode, name in MMLA_INTRINSICS.items():
        if TensorIntrin.get(name, allow_missing=True) is None:
            TensorIntrin.register(name, *_mmla_intrinsic(a_mode))
    _registered = True


def import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (every target's tensor intrinsics; each MetaSchedule
    ``TuneContext`` imports it) in seconds instead of minutes.

    Its ~250 TVMScript functions each call ``inspect.stack()``, which looks up every frame's module.
    The import machinery's frames (``<frozen importlib._bootstrap>``) are in no module's file, so
    ``inspect.getmodule`` misses its cache and rescans all of ``sys.modules`` for each of them: 73-83 s
    in a process that has torch loaded (3,100 modules), 6-7 s with those lookups answered at once. For
    a frame whose file name is ``<...>`` the answer is ``None`` either way (a frame has neither
    ``__module__`` nor ``__name__``, and no module's file is such a name); measured: the same 124
    intrinsics registered, structurally equal.
    """
    import inspect
    import sys

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    real = inspect.getmodule

    def getmodule(obj: Any, _filename: str | None = None) -> Any:
        if inspect.isframe(obj) and (_filename or obj.f_code.co_filename).startswith("<"):
            return None
        return real(obj, _filename)

    inspect.getmodule = getmodule
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.getmodule = real


def dot_isa(target: object) -> str:
    """The int8 dot instructions of ``target`` that the kernels use (:attr:`KernelSpec.dot_isa`):
    ``"avx512vnni"`` (vpdpbusd, e.g. mcpu cascadelake / icelake-server), ``"avx512bw"`` (vpmaddwd,
    vpmaddubsw), ``"avx2"`` (the same two at 256 bits: x86 with AVX2 but no AVX-512BW, e.g. znver3,
    haswell), ``"i8mm"`` (aarch64 with FEAT_I8MM: smmla, usmmla, usdot, and sdot), ``"sdot"``
    (aarch64 with the dot-product extension), ``"wmma"`` (a CUDA GPU of sm_72 or later: ``__dp4a`` and
    the int8 / fp16 tensor cores, :attr:`KernelSpec.tensor_core`), ``"dp4a"`` (sm_61 to sm_70:
    ``__dp4a``) or ``""`` (none: e.g. a Cortex-A72, an x86 before AVX2, an older GPU). CPUs: read from LLVM's
    view of the target (its mcpu and mattr together); a target LLVM cannot describe (unknown triple) has none."""
    from tvm.target import codegen

    kind = getattr(getattr(target, "kind", None), "name", "")
    if kind == "cuda":
        arch = str(target.attrs.get("arch", ""))  # "sm_90"
        digits = arch.removeprefix("sm_").rstrip("abf")
        sm = int(digits) if digits.isdigit() else 0
        return "wmma" if sm >= 72 else "dp4a" if sm >= 61 else ""  # int8 wmma: sm_72 (Xavier) on
    if kind != "llvm":
        return ""
    triple = str(target.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
    arch = {"arm64": "aarch64"}.get(triple.split("-")[0], triple.split("-")[0])
    # asking LLVM about a triple it has no backend for crashes the process (TVM 0.27, LLVM 22)
    if arch not in ("x86_64", "i386", "aarch64") or arch not in list(codegen.llvm_get_targets()):
        return ""
    try:
        if arch != "aarch64":
            if not codegen.target_has_features(["avx512bw", "avx512f"], target):
                return "avx2" if codegen.target_has_features(["avx2"], target) else ""
            return "avx512vnni" if codegen.target_has_features(["avx512vnni"], target) else "avx512bw"
        if not codegen.target_has_features(["neon", "dotprod"], target):
            return ""
        return "i8mm" if codegen.target_has_features(["i8mm"], target) else "sdot"
    except Exception:  # a target LLVM cannot describe: no intrinsic
        return ""


def dot16x2_intrinsics(isa: str) -> dict[str, str]:
    """The exact 16x2 dots of x86 dot ISA ``isa`` by activation mode (``"u8"``, ``"s8"``): the 256-bit
    pair on AVX2, the 512-bit one on AVX-512."""
    return AVX2_DOT_INTRINSICS if isa == "avx2" else DOT_INTRINSICS


def dot_intrinsics_for(target: object) -> list[str]:
    """The dot intrinsics ``target`` can run, else ``[]``. AVX-512BW x86 CPUs: the exact 16x2 dots and
    the 16x4 dot of its ISA, only that one: both 16x4 dots share a description, and the vpmaddubsw one
    would be inexact on the 8-bit kernels a VNNI target blocks 16x4. aarch64: the sdot / usdot 16x4
    dots of its ISA (a dotprod-only target gets the "u7" sdot, which only <= 7-bit uint8 codes reach:
    8-bit ones are shifted into int8 there, :attr:`KernelSpec.a_offset`; an i8mm one the exact usdot
    instead) and, with i8mm, the smmla / usmmla 2x16x8 tiles of the kgroup-8 layout. The 16x2 layout
    has no ARM intrinsic: plain loops."""
    isa = dot_isa(target)
    if isa in CUDA_DOT_ISAS:  # GPU tiling rules live in cuda_schedule.py
        return []
    if isa in ARM_DOT4_INTRINSICS:
        mmla = list(MMLA_INTRINSICS.values()) if isa == "i8mm" else []
        return [*mmla, *ARM_DOT4_INTRINSICS[isa].values()]
    if not isa:
        return []
    return [DOT4_WORD_INTRINSICS[isa], DOT4_INTRINSICS[isa], *dot16x2_intrinsics(isa).values()]  # denser first


def register_unpack_rule() -> None:
    """MetaSchedule rule for the blocks a kernel marks ``schedule_rule = UNPACK_RULE`` (the int4
    unpack feeding the int8 dot): leave it a block of its own. Inlined into the dot it would stop the
    dot from tensorizing; computed at a loop of the dot (sampled here, before the dot is tiled) it
    breaks ``GetTensorizeLoopMapping`` (TVM 0.27 InternalError). So the packed tile is unpacked once
    per call into an int8 buffer, vectorized by ParallelizeVectorizeUnroll's later passes."""
    import tvm_ffi

    def rule(sch: Any, block: Any) -> list:
        return [sch]

    for kind in ("cpu", "cuda"):  # on a GPU the unbound block is then bound by RewriteUnboundBlock
        name = f"s_tir.meta_schedule.{kind}.{UNPACK_RULE}"
        if tvm_ffi.get_global_func(name, allow_missing=True) is None:
            tvm_ffi.register_global_func(name, rule)


__all__ = ["ARM_DOT4_INTRINSICS", "DOT4_INTRINSICS", "DOT4_WORD_INTRINSICS", "DOT_INTRINSICS", "MMLA_INTRINSICS",
           "SPLIT_DOT_INTRINSICS",
           "dot_intrinsics_for", "dot_isa", "import_tensor_intrinsics", "register_intrinsics",
           "register_unpack_rule", "unblock_intrinsic", "unpack_intrinsic"]
