"""Lower a prepared (BN-folded, fx-traced) model and a candidate to a Relax module (imports TVM).

Each quantizable layer becomes one opaque layer kernel (see :mod:`.kernels`) that absorbs the ReLU
and residual-add chain that follows it; the few remaining ops (pooling, flatten, unfused adds) are
Relax ops that TVM legalizes and fuses. Parameters are function inputs, not constants, so nothing
is folded back to wider types at compile time.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx, nn
from torch.nn import functional as F
from tvm import IRModule, relax

from mpsearch.candidate import Candidate
from mpsearch.errors import LoweringError
from mpsearch.hardware.kernels import KernelSpec, make_kernel, pack_weight
from mpsearch.hardware.memory import weight_mode
from mpsearch.quant.fake import ActQuant, act_quantizers, quantize_weight
from mpsearch.quant.prepare import PreparedModel

_RELU = (F.relu, torch.relu, nn.ReLU)
_ADD = (operator.add, torch.add)
_FLATTEN = (torch.flatten,)
_PASSTHROUGH = (nn.Identity, nn.Dropout)
SUPPORTED = "Conv2d, Linear, ReLU, add, AdaptiveAvgPool2d(1), AvgPool2d, MaxPool2d, flatten, Identity, Dropout"


@dataclass
class LoweredModel:
    """A Relax module ``main(x, *params)`` with its parameter arrays and per-layer kernel specs."""

    mod: IRModule
    params: list[np.ndarray]
    kernels: dict[str, KernelSpec] = field(default_factory=dict)
    layer_param_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_param_bytes.values())


def kernel_spec(
    module: nn.Module, x_shape: tuple[int, ...], w_bits: int, act: ActQuant | None, epilogue: tuple[str, ...]
) -> KernelSpec:
    a_mode = "f32" if act is None else "f16" if act.half else ("s8" if act.signed else "u8")
    if isinstance(module, nn.Linear):
        return KernelSpec("linear", x_shape, tuple(module.weight.shape), weight_mode(w_bits), a_mode,
                          epilogue=epilogue)
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise LoweringError(f"conv padding {module.padding!r}/{module.padding_mode} is not supported; "
                            "use integer zero padding")
    return KernelSpec("conv2d", x_shape, tuple(module.weight.shape), weight_mode(w_bits), a_mode,
                      tuple(module.stride), tuple(module.padding), tuple(module.dilation), module.groups,
                      epilogue)


def kernel_arrays(module: nn.Module, spec: KernelSpec, w_bits: int, act: ActQuant | None) -> list[np.ndarray]:
    """The parameter arrays a layer kernel takes after ``x``, in :meth:`KernelSpec.inputs` order."""
    weight = module.weight.detach().float()
    out_ch = weight.shape[0]
    bias = (module.bias.detach().float() if module.bias is not None else torch.zeros(out_ch)).numpy()
    arrays: list[np.ndarray] = []
    int_act = act is not None and not act.half
    if spec.w_mode == "f32":
        arrays.append(weight.numpy())
    elif spec.w_mode == "f16":  # IEEE half, 2 bytes a weight (round to nearest even, as torch's .half())
        arrays.append(weight.half().numpy())
    else:
        codes, w_scale = quantize_weight(weight, w_bits)
        codes_np = codes.numpy()
        arrays.append(pack_weight(spec, codes_np))  # int4 packed / int8 blocked into dot tiles
        scale = w_scale.numpy().astype(np.float32)
        if int_act:  # integer kernel: dequantize the int32 accumulator in one multiply
            scale = (scale * np.float32(act.scale)).astype(np.float32)
        arrays.append(scale)
    arrays.append(bias.astype(np.float32))
    if int_act:
        arrays.append(np.array([act.inv_scale, act.qmin, act.qmax, act.scale], dtype=np.float32))
    return [np.ascontiguousarray(a) for a in arrays]


def _is(node: fx.Node, gm: fx.GraphModule, kinds: tuple) -> bool:
    if node.op == "call_function":
        return node.target in kinds
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), tuple(k for k in kinds if isinstance(k, type)))
    if node.op == "call_method":
        names = {"relu": _RELU, "add": _ADD, "flatten": _FLATTEN}
        return any(node.target == n and kinds is ks for n, ks in names.items())
    return False


def lower(
    prepared: PreparedModel,
    candidate: Candidate,
    ranges: Mapping[str, tuple[float, float]],
    batch: int = 1,
) -> LoweredModel:
    """Lower ``prepared`` with the bits of ``candidate`` to a Relax module for batch size ``batch``."""
    candidate.validate(prepared.layer_names)
    acts = act_quantizers(candidate, ranges)
    gm = prepared.graph_module
    bb = relax.BlockBuilder()
    x_shape = (batch, *prepared.input_shape[1:])
    x_var = relax.Var("x", relax.TensorType(x_shape, "float32"))
    params: list[relax.Var] = [x_var]
    arrays: list[np.ndarray] = []
    lowered = LoweredModel(IRModule(), [])
    env: dict[fx.Node, relax.Expr] = {}
    consumed: set[fx.Node] = set()
    output = None

    with bb.function("main"):
        with bb.dataflow():
            for node in gm.graph.nodes:
                if node in consumed:
                    continue
                if node.op == "placeholder":
                    env[node] = x_var
                elif node.op == "output":
                    arg = node.args[0]
                    if not isinstance(arg, fx.Node):
                        raise LoweringError("models with several outputs are not supported; return one tensor")
                    output = bb.emit_output(env[arg])
                elif node.op == "call_module" and node.target in candidate:
                    name = node.target
                    module = gm.get_submodule(name)
                    epilogue, extra, last = _absorb_epilogue(node, gm, env)
                    consumed.update(_chain(node, last))
                    x_in = env[node.args[0]]
                    in_shape = tuple(int(d) for d in x_in.ty.shape)
                    w_bits, _ = candidate[name]
                    spec = kernel_spec(module, in_shape, w_bits, acts[name], epilogue)
                    layer_arrays = kernel_arrays(module, spec, w_bits, acts[name])
                    call_args = [x_in]
                    for (pname, shape, dtype), arr in zip(spec.inputs()[1:], layer_arrays):
                        var = relax.Var(f"{name.replace('.', '_')}_{pname}", relax.TensorType(shape, dtype))
                        assert arr.shape == tuple(shape) and str(arr.dtype) == dtype, (name, pname)
                        params.append(var)
                        arrays.append(arr)
                        call_args.append(var)
                    call_args += extra
                    gv = bb.add_func(make_kernel(spec), f"layer_{name.replace('.', '_')}")
                    out = bb.emit(relax.call_tir(gv, call_args, relax.TensorType(spec.out_shape, "float32")))
                    env[last] = out
                    lowered.kernels[name] = spec
                    lowered.layer_param_bytes[name] = sum(a.nbytes for a in layer_arrays)
                else:
                    env[node] = _lower_op(bb, node, gm, env)
        if output is None:
            raise LoweringError("the traced graph has no output node")
        bb.emit_func_output(output, params=params)
    lowered.mod = bb.get()
    lowered.params = arrays
    return lowered


def _chain(start: fx.Node, last: fx.Node) -> list[fx.Node]:
    nodes, cur = [], start
    while cur is not last:
        cur = next(iter(cur.users))
        nodes.append(cur)
    return nodes


def _absorb_epilogue(
    node: fx.Node, gm: fx.GraphModule, env: dict[fx.Node, relax.Expr]
) -> tuple[tuple[str, ...], list[relax.Expr], fx.Node]:
    """Follow single-user ReLUs and adds whose other operand is already computed."""
    ops: list[str] = []
    extra: list[relax.Expr] = []
    cur = node
    while len(cur.users) == 1:
        user = next(iter(cur.users))
        if _is(user, gm, _RELU):
            ops.append("relu")
        elif _is(user, gm, _ADD) and len(user.args) == 2 and not user.kwargs:
            other = user.args[1] if user.args[0] is cur else user.args[0]
            while isinstance(other, fx.Node) and _is(other, gm, _PASSTHROUGH):
                other = other.args[0]
            if not isinstance(other, fx.Node) or other not in env:
                break
            ops.append("add")
            extra.append(env[other])
        else:
            break
        cur = user
    return tuple(ops), extra, cur


def _lower_op(bb: relax.BlockBuilder, node: fx.Node, gm: fx.GraphModule, env: dict) -> relax.Expr:
    args = [env[a] if isinstance(a, fx.Node) else a for a in node.args]
    if _is(node, gm, _PASSTHROUGH):
        return args[0]
    if _is(node, gm, _RELU):
        return bb.emit(relax.op.nn.relu(args[0]))
    if _is(node, gm, _ADD) and all(isinstance(a, relax.Expr) for a in args[:2]):
        return bb.emit(relax.op.add(args[0], args[1]))
    if _is(node, gm, _FLATTEN) or (node.op == "call_method" and node.target in ("view", "reshape")):
        x = args[0]
        shape = [int(d) for d in x.ty.shape]
        return bb.emit(relax.op.reshape(x, (shape[0], int(np.prod(shape[1:])))))
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, nn.AdaptiveAvgPool2d) and mod.output_size in (1, (1, 1)):
            return bb.emit(relax.op.mean(args[0], axis=[2, 3], keepdims=True))
        if isinstance(mod, (nn.AvgPool2d, nn.MaxPool2d)):
            pool = relax.op.nn.max_pool2d if isinstance(mod, nn.MaxPool2d) else relax.op.nn.avg_pool2d
            pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
            return bb.emit(pool(args[0], pair(mod.kernel_size), pair(mod.stride or mod.kernel_size),
                                pair(mod.padding)))
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            raise LoweringError(f"layer {node.target!r} is missing from the candidate; give it bits")
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
    raise LoweringError(f"cannot lower {node.op} {target!r} (node {node.name}) to TVM; supported: {SUPPORTED}")
