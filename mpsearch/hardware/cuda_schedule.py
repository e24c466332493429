"""CUDA schedules of the layer kernels: the MetaSchedule design space that tuning searches, and the
deterministic default schedule of untuned builds (imports TVM: load lazily).

The space is TVM's own ``cuda-tensorcore`` rule set (multi-level tiling onto the wmma tensor-core
intrinsics, then plain multi-level tiling, inlining, cross-thread reduction, unrolling, thread
binding) with, in front of it, multi-level tiling that tensorizes int8 reductions with TVM's
registered ``dp4a`` intrinsics (``dp4a_u8s8s32`` / ``dp4a_s8s8s32``: ``__dp4a``, four int8 products
added into int32, exact). What takes which instructions:

- integer kernels whose dot is blocked 16x4 (:attr:`KernelSpec.kgroup` is 4 when ``dot_isa`` is
  ``"dp4a"``): the four reduction elements of a lane go through one ``__dp4a``;
- fp16 kernels (both operands half) of a linear layer: wmma 16x16x16 f16 x f16 -> f32 (batch-1 rows
  padded to 16 by the rule). Convolutions get TVM's plain ``cuda`` rules (plus dp4a): TVM 0.27 maps
  our NCHW fp16 convolutions onto wmma, but none of those samples lowers (``tvm_access_ptr element type
  must match the source buffer``), which would leave an fp16 conv with no valid schedule at all;
- everything else (fp32, weight-only, the 16x2 dot's odd shapes): plain multi-level tiling.

The default schedule of an untuned build (:func:`default_schedule`) is the first design space, in the
rules' order, whose sample under a fixed seed passes MetaSchedule's GPU postprocessors (thread and
shared-memory limits, tensorization) and compiles: the same every run, and it uses dp4a or the tensor
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
_INSTRUCTIONS = {"dp4a": r"__dp4a|dp4a\.", "wmma": r"wmma[:.]", "mma": r"\bmma\.sync|\bmma::|wmma::mma_sync"}


def _is_conv(mod: Any) -> bool:
    return mod is not None and "conv2d" in str(mod)  # topi's conv2d_nchw / group_conv2d_nchw blocks


def space_generator(target: Any, mod: Any = None) -> Any:
    """MetaSchedule's design space for kernel ``mod`` on a CUDA ``target`` (see the module docstring)."""
    from tvm.s_tir import meta_schedule as ms

    from mpsearch.hardware.kernels.intrinsics import import_tensor_intrinsics

    import_tensor_intrinsics()  # registers the wmma and dp4a intrinsics the rules name
    r = ms.schedule_rule
    kind = "cuda" if _is_conv(mod) else "cuda-tensorcore"
    base = r.ScheduleRule.create(kind)  # [ApplyCustomRule, (tensor-core MLT x2), MLT, ...]
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
    ``target``. Returns the scheduled IRModule, or None when no space yields one (the caller then
    falls back to dlight)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.schedule import Trace

    ctx = ms.TuneContext(mod=mod, target=target, space_generator=space_generator(target, mod), rand_state=0,
                         task_name="default")
    for space in ctx.generate_design_space():
        insts = space.trace.insts
        for seed in range(1, seeds + 1):
            sch = tvm.s_tir.Schedule(mod, seed=seed)
            try:
                Trace(insts, {}).apply_to_schedule(sch, remove_postproc=True)
            except Exception as e:  # noqa: BLE001 - a sample the space itself rejects (e.g. a bad split)
                log.debug("sample %d of a design space does not apply: %s", seed, str(e).strip()[-200:])
                continue
            if not all(pp.apply(sch) for pp in ctx.space_generator.postprocs):
                continue
            try:  # TVM 0.27 passes some tensor-core samples that its lowering then rejects
                tvm.compile(sch.mod, target=target)
            except Exception as e:  # noqa: BLE001
                log.debug("sample %d of a design space does not compile: %s", seed, str(e).strip()[-200:])
                continue
            return sch.mod
    return None


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


def instructions(code: str) -> set[str]:
    """Which of the GPU's arithmetic units ``code`` (CUDA source or PTX) uses: ``dp4a``, ``wmma``,
    ``mma`` (tensor-core matrix multiply-accumulate)."""
    return {name for name, pattern in _INSTRUCTIONS.items() if re.search(pattern, code)}


__all__ = ["DP4A_INTRINSICS", "default_schedule", "instructions", "schedule_layer_kernels", "space_generator"]
