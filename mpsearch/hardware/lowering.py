"""Lower a prepared (BN-folded, fx-traced) model and a candidate to a Relax module (imports TVM).

Each quantizable layer becomes one opaque layer kernel (see :mod:`.kernels`) that absorbs the ReLU
and residual-add chain that follows it; the remaining ops (pooling, reshapes, unfused adds and, for
transformer encoders, LayerNorm, GELU, softmax, attention matmuls and token means) are Relax ops that
TVM legalizes and fuses. Only Conv2d/Linear weights and their input activations are quantized: every
other op, the attention matmuls (``q @ k^T``, ``softmax @ v``) included, runs in fp32, exactly as the
PyTorch fake-quant reference does. Linear layers on token sequences ``(B, T, D)`` run their 2-D
kernel on ``(B*T, D)`` (a free reshape on each side). Parameters are function inputs, not constants,
so nothing is folded back to wider types at compile time.
"""

from __future__ import annotations

import math
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
from mpsearch.hardware.kernels.bitserial import route as bitserial_route
from mpsearch.hardware.memory import weight_mode
from mpsearch.quant.fake import ActQuant, act_quantizers, quantize_weight
from mpsearch.quant.prepare import PreparedModel

_RELU = (F.relu, torch.relu, nn.ReLU)
_ADD = (operator.add, torch.add)
_FLATTEN = (torch.flatten,)
_PASSTHROUGH = (nn.Identity, nn.Dropout)
SUPPORTED = ("Conv2d, Linear (2-D or token inputs), ReLU, GELU (erf/tanh), LayerNorm, softmax, "
             "matmul/bmm/@, scaled_dot_product_attention, add/sub/mul/div, mean, cat, expand, unsqueeze, "
             "reshape/view/flatten/permute/transpose/contiguous, tensor indexing (ints, slices), "
             "shape/size arithmetic, parameters (get_attr), AdaptiveAvgPool2d(1), AvgPool2d, MaxPool2d, "
             "Identity, Dropout")


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
    module: nn.Module, x_shape: tuple[int, ...], w_bits: int, act: ActQuant | None, epilogue: tuple[str, ...],
    dot_isa: str = "",
) -> KernelSpec:
    """The kernel of one layer. ``dot_isa`` (:func:`~mpsearch.hardware.kernels.dot_isa` of the target)
    and the activation's bit width pick the blocked dot layout that is exact for them."""
    a_mode = "f32" if act is None else "f16" if act.half else \
        ("z8" if act.asymmetric else "s8" if act.signed else "u8")
    a_bits = act.bits if act is not None and not act.half else 8
    if isinstance(module, nn.Linear):
        return KernelSpec("linear", x_shape, tuple(module.weight.shape), weight_mode(w_bits), a_mode,
                          epilogue=epilogue, a_bits=a_bits, dot_isa=dot_isa)
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise LoweringError(f"conv padding {module.padding!r}/{module.padding_mode} is not supported; "
                            "use integer zero padding")
    return KernelSpec("conv2d", x_shape, tuple(module.weight.shape), weight_mode(w_bits), a_mode,
                      tuple(module.stride), tuple(module.padding), tuple(module.dilation), module.groups,
                      epilogue, a_bits=a_bits, dot_isa=dot_isa)


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
        if spec.integer and act.asymmetric:
            # sum((q - z)·w) = sum(q·w) - z·rowsum(w): the constant per channel joins the bias, so the
            # kernel keeps the symmetric epilogue (conv borders are padded with z: kernels._zero_point_input)
            rowsum = codes_np.reshape(out_ch, -1).astype(np.int64).sum(1)
            bias = bias.astype(np.float64) - scale.astype(np.float64) * act.zero_point * rowsum
    arrays.append(bias.astype(np.float32))
    if int_act:
        qp = [act.inv_scale, act.qmin, act.qmax, act.scale] + ([act.zero_point] if act.asymmetric else [])
        arrays.append(np.array(qp, dtype=np.float32))
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
    dot_isa: str = "",
    bitserial: bool = False,
) -> LoweredModel:
    """Lower ``prepared`` with the bits of ``candidate`` to a Relax module for batch size ``batch``;
    ``dot_isa``: the target's int8 dot instructions (:func:`~mpsearch.hardware.kernels.dot_isa`; ""
    keeps every integer kernel on the 16x2 dot layout, which any target runs). ``bitserial``: W2A2
    layers run bit-serial (the profile's ``precisions.bitserial``; :mod:`.kernels_bitserial`)."""
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

    def add_param(name: str, array: np.ndarray) -> relax.Var:
        """A non-layer parameter (LayerNorm affine, positional embedding ...) as a function input."""
        var = relax.Var(name.replace(".", "_"), relax.TensorType(array.shape, str(array.dtype)))
        params.append(var)
        arrays.append(np.ascontiguousarray(array))
        return var

    with bb.function("main"):
        with bb.dataflow():
            for node in gm.graph.nodes:
                if node in consumed:
                    continue
                if node.op == "placeholder":
                    env[node] = x_var
                elif node.op == "output":
                    arg = node.args[0]
                    if not isinstance(arg, fx.Node) or not isinstance(env[arg], relax.Expr):
                        raise LoweringError("models with several outputs are not supported; return one tensor")
                    output = bb.emit_output(env[arg])
                elif node.op == "call_module" and node.target in candidate:
                    name = node.target
                    module = gm.get_submodule(name)
                    x_in = env[node.args[0]]
                    if not isinstance(x_in, relax.Expr):
                        raise LoweringError(f"layer {name!r} is called on a non-tensor; pass it a tensor")
                    w_bits, _ = candidate[name]
                    tokens = None  # leading dims of a linear layer on (B, T, D) token sequences
                    if isinstance(module, nn.Linear) and len(_shape(x_in)) != 2:
                        tokens = _shape(x_in)[:-1]
                        x_in = bb.emit(relax.op.reshape(x_in, (math.prod(tokens), _shape(x_in)[-1])))
                    in_shape = _shape(x_in)
                    full_out = kernel_spec(module, in_shape, w_bits, acts[name], ()).out_shape
                    if tokens is not None:
                        full_out = (*tokens, full_out[-1])
                    epilogue, extra, last = _absorb_epilogue(node, gm, env, full_out)
                    consumed.update(_chain(node, last))
                    spec = kernel_spec(module, in_shape, w_bits, acts[name], epilogue, dot_isa)
                    if bitserial and not getattr(acts[name], "asymmetric", False):  # bit-planes have no zero point
                        spec = bitserial_route(spec, w_bits, acts[name])
                    if tokens is not None:
                        extra = [bb.emit(relax.op.reshape(e, spec.out_shape)) for e in extra]
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
                    if tokens is not None:
                        out = bb.emit(relax.op.reshape(out, full_out))
                    env[last] = out
                    lowered.kernels[name] = spec
                    lowered.layer_param_bytes[name] = sum(a.nbytes for a in layer_arrays)
                else:
                    env[node] = _lower_op(bb, node, gm, env, add_param)
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
    node: fx.Node, gm: fx.GraphModule, env: dict[fx.Node, relax.Expr], out_shape: tuple[int, ...]
) -> tuple[tuple[str, ...], list[relax.Expr], fx.Node]:
    """Follow single-user ReLUs and adds whose other operand is already computed, with the layer's
    output shape (a broadcast add, e.g. of a positional embedding, stays a Relax op)."""
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
            if (not isinstance(other, fx.Node) or other not in env or not isinstance(env[other], relax.Expr)
                    or _shape(env[other]) != tuple(out_shape)):
                break
            ops.append("add")
            extra.append(env[other])
        else:
            break
        cur = user
    return tuple(ops), extra, cur


# -- everything but the layer kernels: fp32 Relax ops ---------------------------------------------
#
# Values in ``env`` are Relax tensors or plain Python values: shapes are static (the batch is fixed),
# so ``x.shape``, ``x.size(i)`` and arithmetic on them are evaluated here, at lowering time.

_PY_FUNCS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod,
             operator.neg, operator.pow, operator.getitem, getattr, math.sqrt, int, float}
_BINARY = {"add": relax.op.add, "sub": relax.op.subtract, "mul": relax.op.multiply, "div": relax.op.divide,
           "truediv": relax.op.divide}
_FUNC_NAMES = {  # call_function targets -> the op names the methods use
    operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub", operator.mul: "mul",
    torch.mul: "mul", operator.truediv: "div", torch.div: "div", torch.true_divide: "div",
    operator.neg: "neg", torch.neg: "neg", operator.matmul: "matmul", torch.matmul: "matmul", torch.bmm: "matmul",
    torch.softmax: "softmax", F.softmax: "softmax", F.gelu: "gelu", F.relu: "relu", torch.relu: "relu",
    F.layer_norm: "layer_norm", torch.flatten: "flatten", torch.reshape: "reshape", torch.transpose: "transpose",
    torch.permute: "permute", torch.mean: "mean", torch.cat: "cat", torch.concat: "cat",
    torch.unsqueeze: "unsqueeze", F.scaled_dot_product_attention: "sdpa", F.dropout: "dropout",
    F.adaptive_avg_pool2d: "adaptive_avg_pool2d", operator.getitem: "getitem",
}


def _shape(x: relax.Expr) -> tuple[int, ...]:
    return tuple(int(d) for d in x.ty.shape)


def _tensor(v: object, like: relax.Expr) -> relax.Expr:
    return v if isinstance(v, relax.Expr) else relax.const(float(v), like.ty.dtype)


def _axis(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _dims(args: tuple) -> list[int]:
    """``view(a, b)`` and ``view((a, b))`` alike."""
    return list(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else list(args)


def _reshape(bb: relax.BlockBuilder, x: relax.Expr, dims: list[int]) -> relax.Expr:
    if any(not isinstance(d, int) for d in dims):
        raise LoweringError(f"reshape to {dims} is not static; shapes must be known ints at lowering time")
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        dims = [math.prod(_shape(x)) // known if d == -1 else d for d in dims]
    return bb.emit(relax.op.reshape(x, dims))


def _index(bb: relax.BlockBuilder, x: relax.Expr, idx: object) -> relax.Expr:
    """``x[idx]`` for ints, slices with a positive step and ``...`` (e.g. a class token ``h[:, 0]``)."""
    shape = _shape(x)
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(i is Ellipsis for i in idx):
        pos = idx.index(Ellipsis)
        idx = idx[:pos] + (slice(None),) * (len(shape) - len(idx) + 1) + idx[pos + 1:]
    if len(idx) > len(shape):
        raise LoweringError(f"index {idx!r} has more entries than the tensor's {len(shape)} dims")
    axes, begin, end, strides, drop = [], [], [], [], []
    for axis, i in enumerate(idx):
        if isinstance(i, int):
            j = _axis(i, shape[axis])
            axes.append(axis), begin.append(j), end.append(j + 1), strides.append(1), drop.append(axis)
        elif isinstance(i, slice) and all(v is None or isinstance(v, int) for v in (i.start, i.stop, i.step)):
            start, stop, step = i.indices(shape[axis])
            if step <= 0:
                raise LoweringError(f"slice {i!r} has a non-positive step; use a positive step")
            if (start, stop, step) != (0, shape[axis], 1):
                axes.append(axis), begin.append(start), end.append(stop), strides.append(step)
        else:
            raise LoweringError(f"tensor index {i!r} is not supported; index with ints, slices or ...")
    out = bb.emit(relax.op.strided_slice(x, axes, begin, end, strides)) if axes else x
    return bb.emit(relax.op.squeeze(out, drop)) if drop else out


def _sdpa(bb: relax.BlockBuilder, q: relax.Expr, k: relax.Expr, v: relax.Expr, attn_mask: object = None,
          dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
          enable_gqa: bool = False) -> relax.Expr:
    """``softmax(q @ k^T * scale + mask) @ v`` in fp32 Relax ops (TVM fuses the scale and the mask)."""
    if dropout_p or enable_gqa:
        raise LoweringError("scaled_dot_product_attention with dropout or GQA is not supported; "
                            "pass dropout_p=0.0 (eval) and equal head counts")
    ndim = len(_shape(k))
    perm = [*range(ndim - 2), ndim - 1, ndim - 2]
    s = bb.emit(relax.op.matmul(q, bb.emit(relax.op.permute_dims(k, perm))))
    scale = 1.0 / math.sqrt(_shape(q)[-1]) if scale is None else scale
    s = bb.emit(relax.op.multiply(s, relax.const(float(scale), "float32")))
    length, source = _shape(s)[-2:]
    if is_causal:
        mask = np.where(np.triu(np.ones((length, source), bool), 1), -np.inf, 0).astype(np.float32)
        s = bb.emit(relax.op.add(s, relax.const(mask)))
    if isinstance(attn_mask, relax.Expr):
        if attn_mask.ty.dtype == "bool":  # True = attend
            s = bb.emit(relax.op.where(attn_mask, s, relax.const(-np.inf, "float32")))
        else:
            s = bb.emit(relax.op.add(s, attn_mask))
    elif attn_mask is not None:
        raise LoweringError(f"attn_mask {attn_mask!r} is not a tensor; pass a bool or float tensor or None")
    return bb.emit(relax.op.matmul(bb.emit(relax.op.nn.softmax(s, axis=-1)), v))


def _layer_norm(bb: relax.BlockBuilder, x: relax.Expr, normalized_shape: object, weight: object = None,
                bias: object = None, eps: float = 1e-5) -> relax.Expr:
    dims = [normalized_shape] if isinstance(normalized_shape, int) else list(normalized_shape)
    ndim = len(_shape(x))
    axes = list(range(ndim - len(dims), ndim))
    ones = relax.const(np.ones(dims, np.float32))
    gamma = weight if isinstance(weight, relax.Expr) else ones
    beta = bias if isinstance(bias, relax.Expr) else relax.const(np.zeros(dims, np.float32))
    return bb.emit(relax.op.nn.layer_norm(x, gamma, beta, axes, float(eps)))


def _op(bb: relax.BlockBuilder, op: str, node: fx.Node, args: tuple, kwargs: dict) -> relax.Expr | object:
    """Lower the op named ``op`` (a method name, or a function mapped to one); ``NotImplemented`` if unknown."""
    x = args[0] if args else None
    if op in _BINARY and len(args) == 2 and any(isinstance(a, relax.Expr) for a in args):
        if kwargs.get("alpha", 1) != 1 or kwargs.get("rounding_mode") is not None:
            raise LoweringError(f"{op} with {kwargs} is not supported; write the arithmetic out")
        like = args[0] if isinstance(args[0], relax.Expr) else args[1]
        return bb.emit(_BINARY[op](_tensor(args[0], like), _tensor(args[1], like)))
    if not isinstance(x, relax.Expr) and op != "cat":
        return NotImplemented
    ndim = len(_shape(x)) if isinstance(x, relax.Expr) else 0
    if op == "neg":
        return bb.emit(relax.op.negative(x))
    if op in ("contiguous", "dropout", "clone", "detach"):
        return x
    if op == "float" or (op == "to" and args[1:] in ((torch.float32,), ()) and not kwargs):
        return x
    if op == "relu":
        return bb.emit(relax.op.nn.relu(x))
    if op == "gelu":
        approximate = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
        return bb.emit(relax.op.nn.gelu_tanh(x) if approximate == "tanh" else relax.op.nn.gelu(x))
    if op == "softmax":
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if dim is None:
            raise LoweringError(f"softmax at {node.name} has no dim; pass dim= explicitly")
        return bb.emit(relax.op.nn.softmax(x, axis=_axis(dim, ndim)))
    if op == "matmul":
        return bb.emit(relax.op.matmul(x, args[1]))
    if op == "sdpa":
        return _sdpa(bb, *args, **kwargs)
    if op == "layer_norm":
        return _layer_norm(bb, *args, **kwargs)
    if op in ("reshape", "view"):
        return _reshape(bb, x, _dims(args[1:] or (kwargs.get("shape"),)))
    if op == "flatten":
        start = _axis(kwargs.get("start_dim", args[1] if len(args) > 1 else 0), ndim)
        end = _axis(kwargs.get("end_dim", args[2] if len(args) > 2 else -1), ndim)
        shape = _shape(x)
        return _reshape(bb, x, [*shape[:start], math.prod(shape[start:end + 1]), *shape[end + 1:]])
    if op == "transpose":
        a, b = (_axis(d, ndim) for d in args[1:3])
        perm = list(range(ndim))
        perm[a], perm[b] = perm[b], perm[a]
        return bb.emit(relax.op.permute_dims(x, perm))
    if op == "permute":
        return bb.emit(relax.op.permute_dims(x, [_axis(d, ndim) for d in _dims(args[1:] or (kwargs["dims"],))]))
    if op == "unsqueeze":
        return bb.emit(relax.op.expand_dims(x, _axis(kwargs.get("dim", args[1] if len(args) > 1 else 0), ndim + 1)))
    if op == "expand":
        sizes = _dims(args[1:])
        shape = (1,) * (len(sizes) - ndim) + _shape(x)
        return bb.emit(relax.op.broadcast_to(x, [s if d == -1 else d for d, s in zip(sizes, shape)]))
    if op == "mean":
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        axes = None if dim is None else [_axis(d, ndim) for d in ([dim] if isinstance(dim, int) else dim)]
        return bb.emit(relax.op.mean(x, axis=axes, keepdims=bool(keepdim)))
    if op == "cat":
        tensors = list(x if x is not None else kwargs["tensors"])
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        return bb.emit(relax.op.concat(tensors, axis=_axis(dim, len(_shape(tensors[0])))))
    if op == "size":
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        return _shape(x) if dim is None else _shape(x)[dim]
    if op == "dim":
        return ndim
    if op == "getitem":
        return _index(bb, x, args[1])
    if op == "adaptive_avg_pool2d" and args[1] in (1, (1, 1), [1, 1]):
        return bb.emit(relax.op.mean(x, axis=[2, 3], keepdims=True))
    return NotImplemented


def _lower_op(bb: relax.BlockBuilder, node: fx.Node, gm: fx.GraphModule, env: dict, add_param) -> object:
    args = fx.node.map_arg(node.args, lambda n: env[n])
    kwargs = dict(fx.node.map_arg(node.kwargs, lambda n: env[n]))
    if node.op == "get_attr":
        value = gm
        for part in node.target.split("."):
            value = getattr(value, part)
        if isinstance(value, torch.Tensor):
            array = value.detach().cpu().numpy()
            return add_param(node.target, array.astype(np.float32) if array.dtype == np.float64 else array)
        return value
    out = NotImplemented
    if node.op == "call_function":
        if node.target is getattr and isinstance(args[0], relax.Expr):
            if args[1] in ("shape", "ndim"):
                shape = _shape(args[0])
                return shape if args[1] == "shape" else len(shape)
        elif node.target in _PY_FUNCS and not any(isinstance(a, relax.Expr) for a in (*args, *kwargs.values())):
            return node.target(*args, **kwargs)  # static shape arithmetic
        else:
            name = _FUNC_NAMES.get(node.target)
            if name == "dropout" and kwargs.get("training", args[2] if len(args) > 2 else True):
                raise LoweringError(f"F.dropout at {node.name} runs in training mode; pass training=self.training")
            out = NotImplemented if name is None else _op(bb, name, node, args, kwargs)
    elif node.op == "call_method":
        out = _op(bb, node.target, node, args, kwargs)
    elif node.op == "call_module":
        out = _lower_module(bb, node, gm.get_submodule(node.target), args, add_param)
    if out is not NotImplemented:
        return out
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
    what = f"{type(gm.get_submodule(node.target)).__name__} " if node.op == "call_module" else ""
    raise LoweringError(f"cannot lower {node.op} {target!r} ({what}node {node.name}) to TVM; "
                        f"supported: {SUPPORTED}")


def _lower_module(bb: relax.BlockBuilder, node: fx.Node, mod: nn.Module, args: tuple, add_param) -> object:
    x = args[0]
    if isinstance(mod, _PASSTHROUGH):
        return x
    if isinstance(mod, nn.ReLU):
        return _op(bb, "relu", node, (x,), {})
    if isinstance(mod, nn.GELU):
        return _op(bb, "gelu", node, (x,), {"approximate": mod.approximate})
    if isinstance(mod, nn.Softmax):
        return _op(bb, "softmax", node, (x, mod.dim), {})
    if isinstance(mod, nn.Flatten):
        return _op(bb, "flatten", node, (x, mod.start_dim, mod.end_dim), {})
    if isinstance(mod, nn.LayerNorm):
        prefix = node.target.replace(".", "_")
        weight = None if mod.weight is None else add_param(f"{prefix}_weight", mod.weight.detach().numpy())
        bias = None if mod.bias is None else add_param(f"{prefix}_bias", mod.bias.detach().numpy())
        return _layer_norm(bb, x, mod.normalized_shape, weight, bias, mod.eps)
    if isinstance(mod, nn.AdaptiveAvgPool2d):
        return _op(bb, "adaptive_avg_pool2d", node, (x, mod.output_size), {})
    if isinstance(mod, (nn.AvgPool2d, nn.MaxPool2d)):
        pool = relax.op.nn.max_pool2d if isinstance(mod, nn.MaxPool2d) else relax.op.nn.avg_pool2d
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        return bb.emit(pool(x, pair(mod.kernel_size), pair(mod.stride or mod.kernel_size), pair(mod.padding)))
    if isinstance(mod, (nn.Conv2d, nn.Linear)):
        raise LoweringError(f"layer {node.target!r} is missing from the candidate; give it bits")
    return NotImplemented
