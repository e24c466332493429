"""Kernel helpers for tests (imports TVM: load lazily)."""

from __future__ import annotations

from typing import Any


def tensorized(spec: Any, intrin: str) -> Any:
    """The IRModule of ``spec``'s kernel with its dot block tiled and tensorized by ``intrin``, as
    MetaSchedule's ``MultiLevelTilingWithIntrin`` rule does (asserts that the intrinsic matches)."""
    import tvm
    from tvm import s_tir
    from tvm.s_tir.schedule.transform import tile_with_tensor_intrin

    from mpsearch.hardware.kernels import make_kernel, register_intrinsics

    register_intrinsics()
    sch = s_tir.Schedule(tvm.IRModule({"main": make_kernel(spec).with_attr("global_symbol", "main")}))
    block = sch.get_sblock("dot")
    loop = tile_with_tensor_intrin(sch, block, intrin)
    assert loop is not None, f"{intrin} does not match the dot block of {spec}"
    sch.decompose_reduction(block, sch.get_loops(block)[0])
    sch.tensorize(loop, intrin)
    return sch.mod


__all__ = ["tensorized"]
