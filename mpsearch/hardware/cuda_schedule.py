"""CUDA schedules of the layer kernels: the MetaSchedule design space that tuning searches, and the
deterministic default schedule of untuned builds (imports TVM: load lazily).

Which unit a layer takes is the kernel's choice (:attr:`KernelSpec.tensor_core`, on an sm_72+ target
whose ``dot_isa`` is ``"wmma"``), and the space follows it:

- tensor-core kernels (int8 or int4 weights with integer activations; fp16 activations with fp16
  weights or weight-only int8 / int4 codes; output channels and reduction filling 16-tiles): one GEMM (``kernels/gemm.py``, convolutions through im2col)
  that TVM's own ``cuda-tensorcore`` rule set tiles onto its registered wmma intrinsics, m16n16k16
  ``wmma_sync_16x16x16_s8s8s32`` (int8 x int8 -> int32: exact) and ``..._f16f16f32`` (fp16 x fp16 ->
  fp32), with 8-bit uint8 codes shifted into int8 (PTX's integer mma takes ``.s8.s8`` or ``.u8.u8``,
  no mixed pair); no dp4a rule in front, which would take the GEMM first;
- other integer kernels whose dot is blocked 16x4 (:attr:`KernelSpec.kgroup` is 4 on a CUDA target):
  multi-level tiling that tensorizes the reduction with TVM's registered ``dp4a`` intrinsics
  (``dp4a_u8s8s32`` / ``dp4a_s8s8s32``: ``__dp4a``, four int8 products added into int32, exact), in
  front of TVM's ``cuda-tensorcore`` rules (``cuda`` for topi's convolutions);
- everything else (fp32: no TF32, fp16 with a float32 operand, grouped and depthwise convs, the 16x2
  dot's odd shapes): plain multi-level tiling.

TVM 0.27 lowers only some of the tensor-core space's samples. Its StorageRewrite pass lets the shared
memory of the operand tiles (int8 / fp16) and of the accumulator tile (int32 / fp32) share one
allocation and leaves the ``tvm_access_ptr`` type of the other dtype in place (``tvm_access_ptr element
type must match the source buffer``; ``tirx.disable_storage_rewrite`` avoids it); and its CUDA codegen
writes some samples' vectorized int64 index arithmetic as ``make_longlong4`` with eight arguments,
which nvcc rejects. :func:`default_schedule` skips both kinds of sample, and moves on from a space
after ``MAX_COMPILE_FAILURES`` of them: no sample of a 3x3 fp16 conv's first space lowers (all 48
seeds: ~25 s; 12: ~8 s before the second space's first sample does). Where no tensor-core sample
lowers at all (a 16-channel 3x3 fp16 conv on 28x28: two of ResNet-20's), the kernel gets CUDA-core
tiling instead, after ~20 s of trying.

The default schedule of an untuned build (:func:`default_schedule`) is the first design space, in the
rules' order, whose sample under a fixed seed passes MetaSchedule's GPU postprocessors (thread and
shared-memory limits, tensorization) and compiles (TVM's lowering, then nvcc where this TVM cannot
compile CUDA itself): the same every run, and it uses dp4a or the tensor
cores wherever the space does. It is a sample, not a tuned schedule: nothing here says it is fast, only
that it is the hardware's instructions with shared-memory tiling instead of dlight's one-thread-per-
output fallback. Timing it needs the GPU (``benchmarks/device_check.sh``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)

#: TVM's registered dp4a intrinsics (tvm/s_tir/tensor_intrin/dot_product_common.py), by activation code type
DP4A_INTRINSICS = ("dp4a_u8s8s32", "dp4a_s8s8s32")
DEFAULT_SEEDS = 48  # seeded samples tried per design space by default_schedule
MAX_COMPILE_FAILURES = 12  # compile failures after which default_schedule first moves on to the next space
_INSTRUCTIONS = {
    "dp4a": r"__dp4a|dp4a\.", "wmma": r"wmma[:.]", "mma": r"\bmma\.sync|\bmma::|wmma::mma_sync",
    # the tensor cores by operand type: int8 (PTX ".s32.s8.s8.s32"; CUDA fragments of signed / unsigned char)
    # and fp16 (PTX wmma names only the accumulator types, ".f32.f32": the operands are f16 then)
    "imma": r"mma\.sync\S*\.[su]8\b|wmma::matrix_[ab], 16, 16, 16, (?:signed|unsigned) char",
    "hmma": r"wmma\.mma\.sync\S*\.f(?:16|32)\.f(?:16|32)\s|\bmma\.sync\S*\.f16\.f16|wmma::matrix_[ab], 16, 16, 16, half",
}


def _is_conv(mod: Any) -> bool:
    return mod is not None and "conv2d" in str(mod)  # topi's conv2d_nchw / group_conv2d_nchw blocks


def _is_tensor_core_gemm(mod: Any) -> bool:
    from mpsearch.hardware.kernels.gemm import GEMM_BLOCK

    return mod is not None and f'"{GEMM_BLOCK}"' in str(mod)  # KernelSpec.tensor_core kernels (kernels/gemm.py)


def space_generator(target: Any, mod: Any = None, tensor_cores: bool = True) -> Any:
    """MetaSchedule's design space for kernel ``mod`` on a CUDA ``target`` (see the module docstring).
    ``tensor_cores`` False: a tensor-core GEMM gets the CUDA-core space instead (``cuda`` rules, dp4a
    in front), the default schedule's fallback where TVM lowers no tensor-core sample."""
    from tvm.s_tir import meta_schedule as ms

    from mpsearch.hardware.kernels.intrinsics import import_tensor_intrinsics
    from mpsearch.hardware.kernels.intrinsics import register_unpack_rule

    import_tensor_intrinsics()  # registers the wmma and dp4a intrinsics the rules name
    register_unpack_rule()  # the int4 unpack of a tensor-core kernel stays a block of its own
    r = ms.schedule_rule
    gemm = _is_tensor_core_gemm(mod)
    kind = "cuda" if _is_conv(mod) or (gemm and not tensor_cores) else "cuda-tensorcore"
    base = r.ScheduleRule.create(kind)  # [ApplyCustomRule, (tensor-core MLT x2), MLT, ...]
    if gemm and tensor_cores:  # the spec chose the tensor cores: dp4a's tiling would take the GEMM first
        return ms.space_generator.PostOrderApply(
            sch_rules=base, postprocs=ms.postproc.Postproc.create("cuda-tensorcore"), mutator_probs=kind)
    dp4a = [
        r.MultiLevelTilingWithIntrin(
            name, structure="SSSRRSRS", tile_binds=["blockIdx.x", "vthread.x", "threadIdx.x"],
            max_innermost_factor=64, vector_load_lens=[1, 2, 3, 4],
            reuse_read=r.ReuseType(req="must", levels=[4], scope="shared"),
            reuse_write=r.ReuseType(req="must", levels=[3], scope="local"))
        for name in DP4A_INTRINSICS]
    return ms.space_generator.PostOrderApply(
        sch_rules=[base[0], *dp4a, *base[1:]], postprocs=ms.postproc.Postproc.create("cuda-tensorcore"),
        mutator_probs=kind)


def default_schedule(mod: Any, target: Any, seeds: int = DEFAULT_SEEDS) -> Any | None:
    """The deterministic untuned schedule of kernel ``mod`` (an IRModule with ``main``): the first
    design space whose sample under seeds ``1..seeds`` passes the postprocessors and compiles for
    ``target``. A space whose first ``MAX_COMPILE_FAILURES`` compiled samples all fail is left for the
    next one (TVM 0.27 rejects whole spaces at lowering, e.g. every sample of the first tensor-core
    space of a 3x3 fp16 conv); only when no space yields a schedule that way are all seeds of every
    space tried. A tensor-core GEMM whose tensor-core spaces yield nothing even then (TVM 0.27 lowers
    no sample of a 16-channel 3x3 fp16 conv on 28x28) is scheduled on the CUDA cores instead, as the
    kernels of other layers are. Returns the scheduled IRModule, or None when no space yields
    one (the caller then falls back to dlight)."""
    if _is_tensor_core_gemm(mod):
        found = _first_sample(mod, target, space_generator(target, mod), seeds)
        if found is not None:
            return found
        log.info("no tensor-core sample of %s lowers: CUDA-core tiling", mod["main"].attrs.get("global_symbol"))
        return _first_sample(mod, target, space_generator(target, mod, tensor_cores=False), seeds)
    return _first_sample(mod, target, space_generator(target, mod), seeds)


def _first_sample(mod: Any, target: Any, generator: Any, seeds: int) -> Any | None:
    """:func:`default_schedule` over the spaces of ``generator``."""
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.schedule import Trace

    ctx = ms.TuneContext(mod=mod, target=target, space_generator=generator, rand_state=0, task_name="default")
    spaces = [space.trace.insts for space in ctx.generate_design_space()]
    tried: set[tuple[int, int]] = set()  # (space, seed) samples already compiled in vain
    for cap in (MAX_COMPILE_FAILURES, seeds):
        for index, insts in enumerate(spaces):
            failures = 0
            for seed in range(1, seeds + 1):
                if failures >= cap:
                    break
                if (index, seed) in tried:
                    failures += 1
                    continue
                sch = tvm.s_tir.Schedule(mod, seed=seed)
                try:
                    Trace(insts, {}).apply_to_schedule(sch, remove_postproc=True)
                except Exception as e:  # noqa: BLE001 - a sample the space itself rejects (e.g. a bad split)
                    log.debug("sample %d of a design space does not apply: %s", seed, str(e).strip()[-200:])
                    continue
                if not all(pp.apply(sch) for pp in ctx.space_generator.postprocs):
                    continue
                try:  # TVM 0.27 passes some tensor-core samples that its lowering then rejects
                    lib = tvm.compile(sch.mod, target=target)
                    ok = _nvcc_accepts(lib, target)
                except Exception as e:  # noqa: BLE001
                    log.debug("sample %d of a design space does not compile: %s", seed, str(e).strip()[-200:])
                    ok = False
                if ok:
                    return sch.mod
                failures += 1
                tried.add((index, seed))
    return None


def _nvcc_accepts(lib: Any, target: Any) -> bool:
    """Whether nvcc compiles the CUDA code of ``lib``. A CUDA-enabled TVM runtime compiles it inside
    ``tvm.compile`` already; pip's TVM only generates the source, and TVM 0.27's codegen writes some
    samples' vectorized int64 index arithmetic (an im2col gather's) as ``make_longlong4`` with eight
    arguments, which nvcc rejects. Without nvcc nothing can be checked (nor compiled for the GPU)."""
    import tvm


    if tvm.runtime.enabled("cuda") or not nvcc_available():
        return True
    from tvm.support import nvcc

    try:
        with target:
            nvcc.compile_cuda(lib.mod.imports[0].inspect_source(), target_format="ptx", compiler="nvcc")
    except Exception:  # noqa: BLE001 - nvcc's error text: a sample to skip
        return False
    return True


def schedule_layer_kernels(mod: Any, target: Any) -> tuple[Any, dict[str, str]]:
    """Give each layer kernel (``layer_*`` PrimFuncs of a legalized Relax module) its
    :func:`default_schedule`, marked scheduled so dlight leaves it alone. Returns the module and,
    per kernel, how it was scheduled: ``"default"`` or ``"fallback"`` (left to dlight)."""
    import tvm
    import tvm_ffi
    from tvm import tirx

    how: dict[str, str] = {}
    done: dict[Any, Any] = {}
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc) or not gv.name_hint.startswith("layer_"):
            continue
        key = tvm_ffi.structural_hash(func)
        if key not in done:
            scheduled = default_schedule(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
            done[key] = None if scheduled is None else scheduled["main"]
        if done[key] is None:
            how[gv.name_hint] = "fallback"
            continue
        new = done[key].without_attr("global_symbol")
        if "global_symbol" in func.attrs:
            new = new.with_attr("global_symbol", func.attrs["global_symbol"])
        mod[gv] = new.with_attr("tirx.is_scheduled", True)
        how[gv.name_hint] = "default"
    return mod, how


def nvcc_available() -> bool:
    """Whether nvcc can be found the way TVM looks for it (CUDA_HOME, then PATH)."""
    import os
    from pathlib import Path
    from shutil import which

    return bool(which("nvcc") or (os.environ.get("CUDA_HOME") and Path(os.environ["CUDA_HOME"], "bin", "nvcc").exists()))


def instructions(code: str) -> set[str]:
    """Which of the GPU's arithmetic units ``code`` (CUDA source or PTX) uses: ``dp4a``, ``wmma``,
    ``mma`` (tensor-core matrix multiply-accumulate), and which tensor-core arithmetic: ``imma`` (int8
    x int8 -> int32), ``hmma`` (fp16 x fp16). In CUDA source only the kernels count: TVM's preamble
    defines ``__dp4a`` (inline PTX) whenever a kernel has int8 buffers, used or not."""
    start = code.find("__global__")
    code = code[start:] if start >= 0 else code
    return {name for name, pattern in _INSTRUCTIONS.items() if re.search(pattern, code)}


__all__ = ["DP4A_INTRINSICS", "default_schedule", "instructions", "nvcc_available", "schedule_layer_kernels",
           "space_generator"]
