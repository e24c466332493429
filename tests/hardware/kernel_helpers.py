"""Kernel helpers the x86 and ARM kernel tests share (import TVM: load lazily)."""

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


def assert_runs_as_simulated(lowered: Any, prepared: Any, candidate: Any, ranges: Any, x: Any) -> None:
    """Build ``lowered`` (``candidate`` of ``prepared``, lowered at ``x``'s batch) for this host and check
    that its output on ``x`` is the fake-quant simulation's."""
    import numpy as np
    import torch
    import tvm

    from mpsearch.quant.fake import quantize_

    exe = tvm.relax.build(lowered.mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = tvm.relax.VirtualMachine(exe, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a) for a in [x.numpy(), *lowered.params]]).numpy()
    with torch.no_grad():
        ref = quantize_(prepared.copy_module(), candidate, ranges)(x).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


__all__ = ["assert_runs_as_simulated", "tensorized"]
