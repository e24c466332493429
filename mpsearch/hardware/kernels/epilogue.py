"""The end every layer kernel shares: dequantize, bias, fused ReLU / residual adds (imports TVM)."""

from __future__ import annotations

from collections.abc import Callable

from tvm import te, tirx

from mpsearch.hardware.kernels.spec import KernelSpec


def epilogue(spec: KernelSpec, t: dict[str, te.Tensor], acc_at: Callable[..., tirx.PrimExpr]) -> te.Tensor:
    """Dequantize (integer kernels), add the bias, then the fused ReLU / residual adds."""
    residuals = [t[f"res{i}"] for i, e in enumerate(spec.epilogue) if e == "add"]

    def value(*i: tirx.Var) -> tirx.PrimExpr:
        v = acc_at(*i).astype("float32")
        if spec.integer:
            v = v * t["scale"][i[1]]
        v = v + t["bias"][i[1]]
        res = iter(residuals)
        for op in spec.epilogue:
            v = te.max(v, tirx.const(0.0, "float32")) if op == "relu" else v + next(res)(*i)
        return v

    return te.compute(spec.out_shape, value, name="epilogue")


__all__ = ["epilogue"]
