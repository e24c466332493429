"""mpsearch's own tensor intrinsics for the blocked int8 dot (imports TVM: load lazily), and which of
them a target can run."""

from __future__ import annotations

from typing import Any

from tvm import tirx

from mpsearch.hardware.kernels.spec import KGROUP, KQUAD, LANES

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
    vpmaddubsw), ``"dp4a"`` (a CUDA GPU of sm_61 or later: ``__dp4a``) or ``""`` (none: a non-x86 or
    pre-AVX-512 CPU, an older GPU)."""
    from tvm.target import codegen

    kind = getattr(getattr(target, "kind", None), "name", "")
    if kind == "cuda":
        arch = str(target.attrs.get("arch", ""))  # "sm_90"
        digits = arch.removeprefix("sm_").rstrip("abf")
        return "dp4a" if digits.isdigit() and int(digits) >= 61 else ""
    if kind != "llvm":
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
    if isa == "dp4a":  # GPU tiling rules live in cuda_schedule.py
        return []
    return [DOT4_INTRINSICS[isa], *DOT_INTRINSICS.values()] if isa else []  # the denser dot tried first


__all__ = ["DOT4_INTRINSICS", "DOT_INTRINSICS", "dot_intrinsics_for", "dot_isa", "import_tensor_intrinsics",
           "register_intrinsics"]
