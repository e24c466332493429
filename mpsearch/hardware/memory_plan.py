"""Activation memory as TVM plans it: inter-kernel storage after static planning, plus kernel workspace.

Two numbers, both read off the compiler's own IR rather than estimated from tensor shapes:

- **planned activation storage**: the Relax module of the whole model, run through the same passes
  ``tvm.compile`` runs up to ``StaticPlanBlockMemory``; the sum of the ``alloc_storage`` sizes that
  remain is the memory the VM allocates for intermediate tensors (storages are reused between tensors
  whose lifetimes do not overlap). The model input and the weights are not included.
- **kernel workspace**: the global-scope buffers a (scheduled) kernel allocates for itself, e.g. the
  quantized copy of its input or an int32 accumulator. A kernel's workspace lives only while it runs.

A candidate's peak activation memory is bounded by planned storage + the largest workspace of its
kernels; :class:`~mpsearch.hardware.base.LayerCostTable` uses that bound (kernels run one at a time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PlannedMemory:
    """Static memory plan of one Relax function."""

    planned_bytes: int  # sum of alloc_storage sizes after StaticPlanBlockMemory
    storages: int  # how many storages the plan keeps
    unplanned_bytes: int  # the same tensors, each with its own allocation (before planning)


def _dtype_bytes(dtype: Any) -> float:
    import tvm

    dt = tvm.runtime.DataType(str(dtype))
    return dt.bits * dt.lanes / 8


def _const_int(expr: Any) -> int | None:
    try:
        return int(expr)
    except (TypeError, ValueError):
        value = getattr(expr, "value", None)
        return int(value) if value is not None else None


def _alloc_sizes(func: Any, op_name: str) -> list[int]:
    """Constant byte sizes of every ``op_name`` call in a Relax function."""
    import tvm
    from tvm import relax

    sizes: list[int] = []

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == op_name:
            sizes.append(_call_bytes(expr, op_name))

    relax.analysis.post_order_visit(func.body, visit)
    return [s for s in sizes if s >= 0]


def _call_bytes(call: Any, op_name: str) -> int:
    from tvm import relax

    shape = call.args[0]
    if not isinstance(shape, relax.ShapeExpr):
        return -1
    dims = [_const_int(d) for d in shape.values]
    if any(d is None for d in dims):
        return -1
    if op_name == "relax.memory.alloc_storage":  # size in bytes
        return int(np.prod(dims, dtype=np.int64))
    dtype = call.args[1] if op_name == "relax.builtin.alloc_tensor" else call.attrs.dtype
    dtype = getattr(dtype, "value", dtype)
    return int(np.prod(dims, dtype=np.int64) * _dtype_bytes(dtype))


def plan_activation_memory(mod: Any, func_name: str = "main") -> PlannedMemory:
    """Run ``mod`` (a lowered Relax module) through TVM's passes up to static memory planning and
    read the planned storage off the result. Symbolic shapes are not supported (batch is fixed)."""
    import tvm
    from tvm import relax

    prefix = tvm.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
    ])
    before = prefix(mod)
    after = relax.transform.StaticPlanBlockMemory()(before)
    unplanned = _alloc_sizes(before[func_name], "relax.builtin.alloc_tensor")
    storages = _alloc_sizes(after[func_name], "relax.memory.alloc_storage")
    # Tensors the plan could not place (e.g. the function's output) stay as alloc_tensor.
    leftover = _alloc_sizes(after[func_name], "relax.builtin.alloc_tensor")
    return PlannedMemory(sum(storages) + sum(leftover), len(storages) + len(leftover), sum(unplanned))


def workspace_bytes(func: Any) -> int:
    """Bytes of the global-scope buffers a PrimFunc allocates for itself (its workspace), as TVM's
    ``calculate_allocated_bytes`` counts them.

    Pass the *scheduled* kernel (from the tuning database): scheduling inlines some stages and
    caches others in registers, so the unscheduled function over-counts.
    """
    import tvm
    from tvm import s_tir, tirx
    from tvm.s_tir.analysis import calculate_allocated_bytes

    # The allocation-placing part of TVM's TIR lowering (s_tir.pipeline): after it, each buffer the
    # kernel needs is one Allocate, compacted to the region actually used, and StorageRewrite has
    # merged the ones that can share memory.
    # Same order as s_tir.pipeline (CPU-relevant passes); StmtSimplify before FlattenBuffer is needed by
    # tensorized kernels, whose intrinsic buffers carry symbolic offsets until simplified.
    lower = tvm.transform.Sequential([
        s_tir.transform.CanonicalizeLoop(),
        s_tir.transform.LowerInitBlock(),
        s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.CompactBufferAllocation(),
        s_tir.transform.LowerMatchBuffer(),
        s_tir.transform.StmtSimplify(),
        s_tir.transform.LowerOpaqueBlock(),
        tirx.transform.FlattenBuffer(),
        tirx.transform.VectorizeLoop(True),
        tirx.transform.StorageRewrite(),
    ])
    mod = lower(tvm.IRModule({"main": func}))
    per_scope = calculate_allocated_bytes(mod)["main"]
    return int(per_scope.get("global", 0))


__all__ = ["PlannedMemory", "plan_activation_memory", "workspace_bytes"]
