"""Lower a prepared model and a candidate to a Relax module (imports TVM).

mpsearch owns only the quantized layers. The prepared graph (``torch.export``, BatchNorm folded;
:mod:`mpsearch.quant.prepare`) is exported once more at the lowering batch with each quantizable
layer, and the elementwise chain that follows it (ReLU, ReLU6 and other clamps, SiLU, hardswish,
sigmoid, residual adds), replaced by one opaque ``mpsearch::layer``
op; TVM's own Relax importer (``from_exported_program``) lowers every other op, and a custom
converter turns each ``mpsearch::layer`` into the layer's kernel (:mod:`.kernels`): conv 1-D/2-D
(grouped, depthwise, any padding/stride/dilation), linear on 2-D or token inputs ``(B, T, D)`` (the 2-D
kernel on ``(B*T, D)``), ``matmul`` by a constant. Only those layers' weights and input activations are
quantized; every other op runs in fp32, as the PyTorch fake-quant simulation does (softmax, exp, erf,
tanh and GELU as vectorizable approximations within float rounding: :mod:`.fast_math`). Layer
kernel arrays are function inputs after the model inputs (``main(*inputs, *params)``), not constants,
so nothing is folded back to wider types at compile time; the model's other tensors are constants.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from tvm import IRModule, relax

from mpsearch.candidate import Candidate
from mpsearch.errors import LoweringError
from mpsearch.hardware.fast_math import fast_math
from mpsearch.hardware.kernels import KernelSpec, make_kernel, pack_weight
from mpsearch.hardware.kernels.spec import clamp_op
from mpsearch.hardware.kernels.bitserial import route as bitserial_route
from mpsearch.hardware.memory import CRUMB_MAX_BITS, weight_mode
from mpsearch.quant.fake import ActQuant, QuantLayer, act_quantizers, corrected_bias, quantize_weight
from mpsearch.quant.prepare import PreparedModel, module_path

_aten = torch.ops.aten


@dataclass
class LoweredModel:
    """A Relax module ``main(*inputs, *params)`` with its parameter arrays and per-layer kernel specs."""

    mod: IRModule
    params: list[np.ndarray]
    kernels: dict[str, KernelSpec] = field(default_factory=dict)
    layer_param_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_param_bytes.values())


def kernel_spec(
    module: nn.Module, x_shape: tuple[int, ...], w_bits: int, act: ActQuant | None, epilogue: tuple[str, ...],
    dot_isa: str = "", extra_pad: tuple[int, ...] = (0, 0, 0, 0),
) -> KernelSpec:
    """The kernel of one layer. ``dot_isa`` (:func:`~mpsearch.hardware.kernels.dot_isa` of the target)
    and the activation's bit width pick the blocked dot layout that is exact for them. ``extra_pad``:
    zero padding (top, left, bottom, right) of a ``pad`` op folded into the conv (:func:`_folded_pad`),
    the bottom and right at least the top and left (what runs past them is ``KernelSpec.pad_end``)."""
    a_mode = "f32" if act is None else "f16" if act.half else \
        ("z8" if act.asymmetric else "s8" if act.signed else "u8")
    a_bits = act.bits if act is not None and not act.half else 8
    if isinstance(module, nn.Linear):
        spec = KernelSpec("linear", x_shape, tuple(module.weight.shape), weight_mode(w_bits), a_mode,
                          epilogue=epilogue, a_bits=a_bits, dot_isa=dot_isa)
        # 2-bit codes four a byte where the layer's int4 would take the split layout (an x86 GEMV);
        # elsewhere they stay int4 codes two a byte
        return replace(spec, w_mode="i2p") if w_bits <= CRUMB_MAX_BITS and spec.split_codes else spec
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise LoweringError(f"conv padding {module.padding!r}/{module.padding_mode} is not supported; "
                            "use integer zero padding")
    if isinstance(module, nn.Conv1d):  # a 1-D conv is a 2-D conv over (1, L): x (N, C, 1, L)
        return KernelSpec("conv2d", x_shape, (*module.weight.shape[:2], 1, module.weight.shape[2]),
                          weight_mode(w_bits), a_mode, (1, module.stride[0]), (0, module.padding[0] + extra_pad[1]),
                          (1, module.dilation[0]), module.groups, epilogue, a_bits=a_bits, dot_isa=dot_isa,
                          pad_end=(0, extra_pad[3] - extra_pad[1]))
    top, left, bottom, right = extra_pad
    padding = (module.padding[0] + top, module.padding[1] + left)
    return KernelSpec("conv2d", x_shape, tuple(module.weight.shape), weight_mode(w_bits), a_mode,
                      tuple(module.stride), padding, tuple(module.dilation), module.groups,
                      epilogue, a_bits=a_bits, dot_isa=dot_isa, pad_end=(bottom - top, right - left))


def kernel_arrays(module: nn.Module, spec: KernelSpec, w_bits: int, act: ActQuant | None) -> list[np.ndarray]:
    """The parameter arrays a layer kernel takes after ``x``, in :meth:`KernelSpec.inputs` order."""
    weight = module.weight.detach().float().reshape(spec.w_shape)
    out_ch = weight.shape[0]
    bias = corrected_bias(module, w_bits)  # the fake-quant layer's bias (corrected for the rounding, if it is)
    bias = (bias if bias is not None else torch.zeros(out_ch)).numpy()
    arrays: list[np.ndarray] = []
    int_act = act is not None and not act.half
    if spec.w_mode == "f32":
        arrays.append(pack_weight(spec, weight.numpy()) if spec.float_blocked else weight.numpy())
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
    if spec.acc_offset:  # (a_offset - z) * rowsum(w), added to the int32 accumulator
        rowsum = codes_np.reshape(out_ch, -1).astype(np.int64).sum(1)
        zero = int(round(act.zero_point)) if act.asymmetric else 0
        arrays.append(((spec.a_offset - zero) * rowsum).astype(np.int32))
    if int_act:
        qp = [act.inv_scale, act.qmin, act.qmax, act.scale] + ([act.zero_point] if act.asymmetric else [])
        arrays.append(np.array(qp, dtype=np.float32))
    return [np.ascontiguousarray(a) for a in arrays]




# -- the layer op: a quantizable layer and its fused epilogue, opaque to torch.export --------------

@torch.library.custom_op("mpsearch::layer", mutates_args=())
def _layer_op(x: torch.Tensor, extras: list[torch.Tensor], name: str, epilogue: str,
              out_shape: list[int], pad: list[int]) -> torch.Tensor:
    """Stands for layer ``name`` (its ``epilogue``, and a zero ``pad`` (top, left, bottom, right) of its
    input folded into the conv) in the graph handed to TVM; never run for values."""
    return x.new_zeros(out_shape)


@_layer_op.register_fake
def _(x: torch.Tensor, extras: list[torch.Tensor], name: str, epilogue: str, out_shape: list[int],
      pad: list[int]) -> torch.Tensor:
    return x.new_empty(out_shape)


_PAD = (_aten.pad.default, _aten.constant_pad_nd.default)


def _folded_pad(node: fx.Node, module: nn.Module) -> tuple[fx.Node, list[int]]:
    """The input of conv layer ``node`` and the zero padding (top, left, bottom, right) to fold into its
    kernel: a constant-zero ``pad`` of the spatial dims whose only user is the layer, at least as much at
    the end as at the start (TF-style "same" padding written as ``F.pad``: symmetric before a stride-1
    conv, one more row and column at the end before a stride-2 one) needs no pass of its own. Anything
    else (more at the start, non-zero, reflect) stays a Relax op: ``(input, [0, 0, 0, 0])``."""
    x = node.args[0]
    none = [0, 0, 0, 0]
    if not isinstance(module, (nn.Conv1d, nn.Conv2d)) or not isinstance(x, fx.Node) or x.op != "call_function" \
            or x.target not in _PAD or len(x.users) != 1:
        return x, none
    pads = list(x.args[1]) if len(x.args) > 1 else []
    mode = x.args[2] if len(x.args) > 2 else x.kwargs.get("mode", "constant")
    value = x.args[3] if len(x.args) > 3 else x.kwargs.get("value", 0.0)
    spatial = 2 if isinstance(module, nn.Conv2d) else 1
    if mode != "constant" or value not in (None, 0, 0.0) or len(pads) != 2 * spatial \
            or not all(isinstance(p, int) and p >= 0 for p in pads) \
            or any(end < start for start, end in zip(pads[0::2], pads[1::2])):
        return x, none
    left, right, top, bottom = pads if spatial == 2 else (*pads, 0, 0)  # F.pad lists the last dim first
    return x.args[0], [top, left, bottom, right]


_ADD = (_aten.add.Tensor, _aten.add_.Tensor)
_UNARY = {_aten.relu.default: "relu", _aten.relu_.default: "relu", _aten.silu.default: "silu",
          _aten.silu_.default: "silu", _aten.hardswish.default: "hardswish", _aten.hardswish_.default: "hardswish",
          _aten.sigmoid.default: "sigmoid", _aten.sigmoid_.default: "sigmoid"}
# op -> its (lower, upper) bound where the call gives none: relu6 has no bound arguments at all
_CLAMPS = {_aten.relu6.default: (0.0, 6.0), _aten.hardtanh.default: (-1.0, 1.0), _aten.hardtanh_.default: (-1.0, 1.0),
           _aten.clamp.default: (None, None), _aten.clamp_.default: (None, None)}


def _clamp(user: fx.Node) -> str | None:
    """The epilogue op of a clamp / hardtanh node with constant bounds (None if a bound is a tensor)."""
    lo, hi = _CLAMPS[user.target]
    names = ("min_val", "max_val") if "hardtanh" in str(user.target) else ("min", "max")
    args = list(user.args[1:3])
    bounds = [args[i] if i < len(args) else user.kwargs.get(names[i], (lo, hi)[i]) for i in range(2)]
    if not all(b is None or isinstance(b, (int, float)) for b in bounds) or bounds == [None, None]:
        return None
    return clamp_op(*bounds)


def _absorb_epilogue(node: fx.Node, order: dict[fx.Node, int], shape: tuple[int, ...]) -> tuple[list[str], list[fx.Node], fx.Node]:
    """Follow the single-user elementwise chain after a layer: ReLU, clamps with constant bounds (ReLU6),
    SiLU, hardswish, sigmoid, and adds whose other operand is computed before the layer and has its
    output shape (a broadcast add, e.g. of a positional embedding, stays a Relax op). Each becomes part
    of the layer kernel's epilogue instead of another pass over its float output."""
    ops: list[str] = []
    extra: list[fx.Node] = []
    cur = node
    while len(cur.users) == 1:
        user = next(iter(cur.users))
        if user.op == "call_function" and user.target in _UNARY and len(user.args) == 1 and not user.kwargs:
            ops.append(_UNARY[user.target])
        elif user.op == "call_function" and user.target in _CLAMPS and user.args[0] is cur \
                and (op := _clamp(user)) is not None:
            ops.append(op)
        elif user.op == "call_function" and user.target in _ADD and len(user.args) == 2 and not user.kwargs:
            other = user.args[1] if user.args[0] is cur else user.args[0]
            meta = other.meta.get("tensor_meta") if isinstance(other, fx.Node) else None
            if meta is None or order.get(other, len(order)) > order[node] or tuple(meta.shape) != tuple(shape) \
                    or meta.dtype != torch.float32 or not _same_symbolic_shape(other, node):
                break
            ops.append("add")
            extra.append(other)
        else:
            break
        cur = user
    return ops, extra, cur


def _plain_layer(module: nn.Module) -> nn.Module:
    return module.layer if isinstance(module, QuantLayer) else module


def _same_symbolic_shape(a: fx.Node, b: fx.Node) -> bool:
    """Equal shapes at every batch (export's symbolic batch), not only at the probe's batch of 1:
    a (1, T, D) positional embedding is not a (B, T, D) residual."""
    va, vb = a.meta.get("val"), b.meta.get("val")
    if not isinstance(va, torch.Tensor) or not isinstance(vb, torch.Tensor):
        return False
    return [str(d) for d in va.shape] == [str(d) for d in vb.shape]


def _shape(x: relax.Expr) -> tuple[int, ...]:
    return tuple(int(d) for d in x.ty.shape)


def lowering_program(prepared: PreparedModel, batch: int) -> torch.export.ExportedProgram:
    """The prepared graph at batch ``batch`` with each layer and its epilogue as one ``mpsearch::layer``
    op, exported and decomposed to core ATen (candidate-independent: cached on ``prepared``)."""
    cache = prepared.__dict__.setdefault("_lowering_programs", {})
    if batch in cache:
        return cache[batch]
    import copy

    gm = copy.deepcopy(prepared.graph_module)
    examples = prepared.example_inputs(batch)
    with torch.no_grad():  # shapes at this batch (the batch is not always dim 0: (T, B, D) attention)
        ShapeProp(gm).propagate(*examples)
    names = set(prepared.layer_names)
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    for node in nodes:
        if node.op != "call_module" or node.target not in names:
            continue
        out_shape = tuple(node.meta["tensor_meta"].shape)
        ops, extra, last = _absorb_epilogue(node, order, out_shape)
        x, pad = _folded_pad(node, _plain_layer(gm.get_submodule(node.target)))
        folded = node.args[0] if x is not node.args[0] else None
        with gm.graph.inserting_after(last):
            new = gm.graph.call_function(
                torch.ops.mpsearch.layer.default,
                (x, extra, str(node.target), ",".join(ops), list(out_shape), pad))
        new.meta["tensor_meta"] = last.meta.get("tensor_meta")
        new.meta["val"] = last.meta.get("val")
        order[new] = order[last]
        last.replace_all_uses_with(new)
        for n in reversed([node, *_chain(node, last)]):
            gm.graph.erase_node(n)
        if folded is not None:  # the pad now done by the kernel
            gm.graph.erase_node(folded)
    for name in names:  # the layer weights travel as kernel arrays, not as exported parameters
        owner, _, attr = name.rpartition(".")
        parent = gm.get_submodule(owner) if owner else gm
        if attr in parent._modules:
            del parent._modules[attr]
    gm.graph.lint()
    gm.recompile()
    try:
        ep = torch.export.export(gm, examples, strict=False).run_decompositions()
    except Exception as e:  # the prepared graph exported once already; this is a bug, said in one line
        raise LoweringError(f"re-exporting the prepared graph at batch {batch} failed "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    for node in ep.graph.nodes:  # carry the first export's module paths for error messages
        node.meta.setdefault("mpsearch_path", module_path(node))
        if node.op == "call_function" and node.target is _aten.cumsum.default and "dtype" not in node.kwargs:
            # torch promotes cumsum of bool/int to int64; TVM's importer keeps bool and LLVM then fails
            # (a causal mask's cumsum in transformers' GPT-2): pass the result dtype explicitly
            out, inp = node.meta.get("val"), getattr(node.args[0], "meta", {}).get("val")
            if isinstance(out, torch.Tensor) and isinstance(inp, torch.Tensor) and out.dtype != inp.dtype:
                node.kwargs = {**node.kwargs, "dtype": out.dtype}
    cache[batch] = ep
    return ep


def _chain(start: fx.Node, last: fx.Node) -> list[fx.Node]:
    nodes, cur = [], start
    while cur is not last:
        cur = next(iter(cur.users))
        nodes.append(cur)
    return nodes


def _naming_failures(op: str, convert: Any) -> Any:
    def converted(node: fx.Node, *rest: Any) -> Any:
        try:
            return convert(node, *rest)
        except LoweringError:
            raise
        except Exception as e:  # the importer raises AssertionError/ValueError/TVMError on what it cannot take
            path = node.meta.get("mpsearch_path") or module_path(node)
            raise LoweringError(f"TVM's Relax importer failed on op {op} (node {node.name}"
                                f"{' in module ' + path if path else ''}: {type(e).__name__}: "
                                f"{' '.join(str(e).split())[:200]}); rewrite that computation with supported "
                                "ops") from None
    return converted


def _importer_class() -> type:
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    class Importer(ExportedProgramImporter):
        """TVM's importer, with the layer kernels' arrays appended to ``main``'s inputs."""

        extra_vars: dict[str, relax.Var] = {}

        def create_convert_map(self):  # noqa: ANN202
            """TVM's converters, each failure one line naming the node and the module it computes."""
            return {name: _naming_failures(name, fn) for name, fn in super().create_convert_map().items()}

        def create_input_vars(self, exported_program):  # noqa: ANN001, ANN202
            params, user_inputs, ranges = super().create_input_vars(exported_program)
            params.update(self.extra_vars)
            return params, user_inputs, ranges

        def _explicit(self, data: relax.Expr, indices: list, trailing: bool) -> list | None:
            """``indices`` (``None`` for a whole dim) as index tensors that broadcast the way PyTorch
            indexes: the index tensors' broadcast shape in place of the first one when they are adjacent
            (the sliced dims before it stay before it), else first, with every sliced dim after it in
            order. ``trailing``: sliced dims after the last index tensor as index tensors too (else left
            to the op, which keeps them). None where TVM's importer gets it right already."""
            indices = list(indices)
            if not trailing:
                while indices and indices[-1] is None:
                    indices.pop()
            given = [i for i, idx in enumerate(indices) if idx is not None]
            if not given or len(given) == len(indices):
                return None
            if given == list(range(given[0], given[-1] + 1)):  # adjacent
                if len(given) == 1 and given[-1] == len(indices) - 1:
                    return None  # one index tensor after slices: TVM's importer takes it right
                before = list(range(given[0]))
            else:
                before = []
            after = [i for i, idx in enumerate(indices) if idx is None and i not in before]
            ndim = max(indices[i].ty.ndim for i in given)
            total = len(before) + ndim + len(after)
            shape = self.shape_of(data)
            bb = self.block_builder
            out = []
            for i, idx in enumerate(indices):
                if idx is not None:
                    out.append(bb.emit(relax.op.reshape(idx, [*idx.ty.shape] + [1] * len(after))) if after else idx)
                    continue
                at = before.index(i) if i in before else len(before) + ndim + after.index(i)
                a = bb.emit(relax.op.arange(relax.prim_value(0), shape[i], relax.prim_value(1), "int64"))
                out.append(bb.emit(relax.op.reshape(a, [1] * at + [shape[i]] + [1] * (total - 1 - at))))
            return out

        def _index_tensor(self, node: fx.Node) -> relax.Var:
            """``x[:, :, i, j]``: sliced leading dims, then index tensors side by side (``F.unfold``
            decomposes to it). TVM's importer puts every slice on the same leading axis and fails to
            broadcast (or, for 1-D indices, takes their outer product where PyTorch zips them)."""
            data, indices = self.retrieve_args(node)[:2]
            explicit = self._explicit(data, indices, trailing=False)
            if explicit is None:
                return super()._index_tensor(node)
            return self.block_builder.emit(relax.op.index_tensor(data, explicit))

        def _index_put(self, node: fx.Node) -> relax.Var:
            """``x[:, :, i, j] = v`` (``F.fold`` decomposes to it, accumulating): the same slices as
            :meth:`_index_tensor`, given to TVM's converter (which keeps ``index_put_``'s aliasing) as
            index tensors."""
            args = list(self.retrieve_args(node))
            if len(args) > 1 and args[1]:  # dims past the last index: whole (``index_add`` along a middle dim)
                args[1] = [*args[1], *[None] * (len(self.shape_of(args[0])) - len(args[1]))]
            explicit = self._explicit(args[0], args[1], trailing=True) if len(args) > 1 and args[1] else None
            if explicit is None:
                return super()._index_put(node)
            args[1] = explicit
            self.retrieve_args = lambda n: args if n is node else type(self).retrieve_args(self, n)
            try:
                return super()._index_put(node)
            finally:
                del self.retrieve_args

    return Importer


def unsupported_ops(ep: torch.export.ExportedProgram) -> list[tuple[str, fx.Node]]:
    """``(op name, node)`` of every call TVM's Relax importer has no converter for."""
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    known = ExportedProgramImporter().convert_map
    out = []
    for node in ep.graph.nodes:
        if node.op == "call_function" and node.target is not torch.ops.mpsearch.layer.default:
            name = getattr(node.target, "__name__", str(node.target))
            if name not in known:
                out.append((name, node))
    return out


def check_supported(prepared: PreparedModel, batch: int = 1) -> None:
    """Raise :class:`LoweringError` naming the first op TVM cannot import, its node and module path."""
    ep = lowering_program(prepared, batch)
    missing = unsupported_ops(ep)
    if missing:
        name, node = missing[0]
        path = node.meta.get("mpsearch_path") or module_path(node)
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise LoweringError(f"TVM's Relax importer cannot lower op {name} (node {node.name}"
                            f"{' in module ' + path if path else ''}){more}; rewrite that computation "
                            "with supported ops or register a converter with TVM (custom_convert_map)")


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
    check_supported(prepared, batch)
    ep = lowering_program(prepared, batch)
    gm = prepared.graph_module
    lowered = LoweredModel(IRModule(), [])
    plans: dict[str, tuple[KernelSpec, list[relax.Var], tuple[int, ...], tuple[int, ...]]] = {}
    extra_vars: dict[str, relax.Var] = {}
    for node in ep.graph.nodes:
        if node.target is not torch.ops.mpsearch.layer.default:
            continue
        x_node, _, name, epi, out_shape, pad = node.args
        module = _plain_layer(gm.get_submodule(name))
        x_shape = tuple(int(d) for d in x_node.meta["val"].shape)
        if isinstance(module, nn.Linear):
            k_in = (math.prod(x_shape[:-1]), x_shape[-1])
        elif isinstance(module, nn.Conv1d):
            k_in = (x_shape[0], x_shape[1], 1, x_shape[2])
        else:
            k_in = x_shape
        w_bits, _ = candidate[name]
        epilogue = tuple(e for e in epi.split(",") if e)
        spec = kernel_spec(module, k_in, w_bits, acts[name], epilogue, dot_isa, tuple(pad))
        if bitserial and not getattr(acts[name], "asymmetric", False):  # bit-planes have no zero point
            spec = bitserial_route(spec, w_bits, acts[name])
        arrays = kernel_arrays(module, spec, w_bits, acts[name])
        variables = []
        for (pname, shape, dtype), arr in zip(spec.inputs()[1:], arrays):
            if arr.shape != tuple(shape) or str(arr.dtype) != dtype:
                raise LoweringError(f"layer {name!r}: kernel array {pname} is {arr.shape} {arr.dtype}, "
                                    f"the kernel takes {tuple(shape)} {dtype}")
            var = relax.Var(f"{name.replace('.', '_')}_{pname}", relax.TensorType(shape, dtype))
            variables.append(var)
            extra_vars[f"mpsearch_{name}_{pname}"] = var
            lowered.params.append(arr)
        plans[name] = (spec, variables, k_in, tuple(out_shape))
        lowered.kernels[name] = spec
        lowered.layer_param_bytes[name] = sum(a.nbytes for a in arrays)

    def convert(node: fx.Node, importer: Any) -> relax.Expr:
        bb = importer.block_builder
        x_node, extras, name, *_ = node.args
        spec, variables, k_in, out_shape = plans[name]
        x = importer.env[x_node]
        if _shape(x) != k_in:
            x = bb.emit(relax.op.reshape(x, k_in))
        extra = [importer.env[e] for e in extras]
        extra = [e if _shape(e) == spec.out_shape
                 else bb.emit(relax.op.reshape(e, spec.out_shape)) for e in extra]
        gv = bb.add_func(make_kernel(spec), f"layer_{name.replace('.', '_')}")
        out = bb.emit(relax.call_tir(gv, [x, *variables, *extra], relax.TensorType(spec.out_shape, "float32")))
        if tuple(spec.out_shape) != out_shape:
            out = bb.emit(relax.op.reshape(out, out_shape))
        return out

    importer = _importer_class()()
    importer.extra_vars = extra_vars
    try:
        mod = importer.from_exported_program(ep, False, True, False, {"layer.default": convert})
    except LoweringError:
        raise
    except Exception as e:  # the importer raises AssertionError/ValueError/TVMError on what it cannot take
        raise LoweringError(f"TVM's Relax importer failed on the model ({type(e).__name__}: "
                            f"{' '.join(str(e).split())[:240]}); rewrite the op it names with supported ops") from None
    lowered.mod = fast_math(mod)
    return lowered


def per_sample(lowered: LoweredModel, n_inputs: int, batch: int) -> LoweredModel:
    """``lowered`` (a batch-1 module) as a batch-``batch`` library that runs the batch-1 graph once per
    sample: ``main`` slices each input's sample ``i`` (dim 0), calls the batch-1 ``main`` (renamed
    ``sample``) on it and concatenates the outputs along dim 0. Same kernels, same parameters, the
    same arithmetic sample by sample.

    Layer by layer at batch 8, a CNN's large early maps (EfficientNet-Lite0's 96 channels at 112x112:
    4.8 MB a sample) leave the cache between layers; a sample at a time they stay in L2, so on one
    CPU thread the per-sample library can be the faster one (``baselines`` times both)."""
    main = lowered.mod["main"]
    inputs, params = list(main.params[:n_inputs]), list(main.params[n_inputs:])
    tuple_out = isinstance(main.ret_ty, relax.TupleType)
    outs = main.ret_ty.fields if tuple_out else [main.ret_ty]
    for what, ty in [*(("input", p.ty) for p in inputs), *(("output", t) for t in outs)]:
        if not isinstance(ty, relax.TensorType) or ty.shape is None or len(ty.shape) == 0 or int(ty.shape[0]) != 1:
            raise LoweringError(f"a per-sample library needs a batch-1 module whose inputs and outputs are "
                                f"tensors with the batch in dim 0; an {what} is {ty}: lower at the batch instead")
    mod = IRModule({gv: f for gv, f in lowered.mod.functions_items() if gv.name_hint != "main"})
    bb = relax.BlockBuilder(mod)
    sample = bb.add_func(main.with_attr("global_symbol", "sample"), "sample")
    new_inputs = [relax.Var(v.name, relax.TensorType([batch, *list(v.ty.shape)[1:]], v.ty.dtype)) for v in inputs]
    new_params = [relax.Var(v.name, v.ty) for v in params]
    with bb.function("main", [*new_inputs, *new_params], pure=True):
        results = []
        for i in range(batch):
            xs = [bb.emit(relax.op.strided_slice(x, axes=[0], begin=[i], end=[i + 1])) for x in new_inputs]
            results.append(bb.emit(relax.Call(sample, [*xs, *new_params])))
        if not tuple_out:
            ret = bb.emit(relax.op.concat(results, axis=0))
        else:
            fields = [bb.emit(relax.op.concat([bb.emit(relax.TupleGetItem(r, j)) for r in results], axis=0))
                      for j in range(len(outs))]
            ret = bb.emit(relax.Tuple(fields))
        bb.emit_func_output(ret)
    return LoweredModel(bb.get(), lowered.params, lowered.kernels, lowered.layer_param_bytes)
