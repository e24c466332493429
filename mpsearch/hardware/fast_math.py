"""Vectorizable transcendental functions for the ops mpsearch does not own (imports TVM).

TVM legalizes ``exp``, ``erf`` and ``tanh`` to calls LLVM does not vectorize, so a transformer's
softmax and GELU ran scalar: MiniLM's GELU at 128 tokens took 1.18 ms per layer and its softmax
0.63 ms (one thread of an AVX-512 Xeon), against 0.05 and 0.25 ms with the approximations below,
tuned. ONNX Runtime's CPU kernels approximate these functions the same way.

:func:`fast_math` rewrites, in a Relax module's functions, float32 ``softmax``, ``exp``, ``erf``,
``tanh`` and both GELU forms to TOPI's polynomial and rational approximations (softmax: TOPI's fast
softmax, its rows scaled by their sum's reciprocal, :func:`fast_softmax`). Measured against
float64 (tests/hardware/test_model_ops.py): ``exp`` within 5e-6 relative error, ``erf``, ``tanh``,
GELU and softmax within 2e-6 absolute. The PyTorch simulation keeps the exact functions: the
difference is float rounding noise in fp32 ops, far below any quantization step.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax, te, topi
from tvm.relax import PyExprMutator, expr_functor


def fast_gelu(x: te.Tensor) -> te.Tensor:
    """``x/2 * (1 + erf(x / sqrt 2))`` with the fast erf."""
    return topi.multiply(topi.multiply(x, 0.5), topi.add(topi.fast_erf(topi.multiply(x, 1 / math.sqrt(2))), 1.0))


def fast_gelu_tanh(x: te.Tensor) -> te.Tensor:
    """``x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`` with the fast tanh."""
    inner = topi.multiply(topi.add(x, topi.multiply(topi.multiply(topi.multiply(x, x), x), 0.044715)),
                          math.sqrt(2 / math.pi))
    return topi.multiply(topi.multiply(x, 0.5), topi.add(topi.fast_tanh(inner), 1.0))


def fast_softmax(x: te.Tensor, axis: int) -> te.Tensor:
    """TOPI's ``fast_softmax`` (the same blocks: ``T_softmax_maxelem``, ``T_softmax_delta``, ``T_fast_exp``,
    ``T_softmax_expsum``, ``T_softmax_norm``), except that each row is scaled by its sum's reciprocal:
    one division a row, not one an element (a 16-lane ``vdivps`` costs about 20 multiplies)."""
    axis %= len(x.shape)
    reduced = tuple(d for i, d in enumerate(x.shape) if i != axis)

    def row(idx: tuple) -> tuple:  # an element's indices without the softmax axis
        return tuple(v for i, v in enumerate(idx) if i != axis)

    def along(idx: tuple, k: te.IterVar) -> tuple:  # a row's indices with k on the softmax axis
        return (*idx[:axis], k, *idx[axis:])

    k = te.reduce_axis((0, x.shape[axis]), name="k")
    maxelem = te.compute(reduced, lambda *i: te.max(x[along(i, k)], axis=k), name="T_softmax_maxelem")
    exp = topi.fast_exp(te.compute(x.shape, lambda *i: x[i] - maxelem[row(i)], name="T_softmax_delta"))
    k = te.reduce_axis((0, x.shape[axis]), name="k")
    expsum = te.compute(reduced, lambda *i: te.sum(exp[along(i, k)], axis=k), name="T_softmax_expsum")
    one = tvm.tirx.const(1.0, x.dtype)
    return te.compute(x.shape, lambda *i: exp[i] * (one / expsum[row(i)]), name="T_softmax_norm", attrs={"axis": axis})


_REWRITES = {
    "relax.exp": lambda call: (topi.fast_exp, call.args[0]),
    "relax.erf": lambda call: (topi.fast_erf, call.args[0]),
    "relax.tanh": lambda call: (topi.fast_tanh, call.args[0]),
    "relax.nn.gelu": lambda call: (fast_gelu, call.args[0]),
    "relax.nn.gelu_tanh": lambda call: (fast_gelu_tanh, call.args[0]),
    "relax.nn.softmax": lambda call: (fast_softmax, call.args[0], int(call.attrs.axis)),
}


@expr_functor.mutator
class _FastMath(PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        new = super().visit_call_(call)
        rewrite = _REWRITES.get(getattr(call.op, "name", None))
        if rewrite is None or getattr(getattr(call, "ty", None), "dtype", None) != "float32":  # fp16: TVM's own
            return new
        return self.builder_.call_te(*rewrite(new))


def fast_math(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with its float32 softmax, exp, erf, tanh and GELU as TOPI's fast approximations."""
    mutator = _FastMath(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()


__all__ = ["fast_gelu", "fast_gelu_tanh", "fast_math", "fast_softmax"]
