"""Turn a user's ``nn.Module`` into the graph every stage works on: exported, BatchNorm folded.

The model is captured with ``torch.export`` (non-strict, so Hugging Face models with Python-level
control flow on shapes export), BatchNorm is folded into the convolution it follows, and every
conv / linear computation of the graph becomes one quantizable layer, whatever wrote it: an
``nn.Conv1d``/``nn.Conv2d``/``nn.Linear`` (or a subclass whose ``forward`` calls ``F.conv2d``),
a bare ``F.conv2d`` / ``F.linear``, or ``torch.matmul`` with a constant weight. Each becomes a
plain ``nn.Conv1d``/``nn.Conv2d``/``nn.Linear`` submodule called from the graph (``call_module``),
named by the module path that computed it, so calibration hooks, :func:`~mpsearch.quant.quantize_`
and lowering address layers by name. Everything else stays as the exported ATen ops, which PyTorch
runs for the simulation and TVM's Relax importer lowers (:mod:`mpsearch.hardware.lowering`): one
graph for both. Conv/linear computations that cannot be a layer (a computed weight, a transposed
convolution) stay in float, and :attr:`PreparedModel.float_layers` says why.
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils.fusion import fuse_conv_bn_weights

from mpsearch.errors import ConfigError, LoweringError

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
DTYPES = ("float32", "int64", "int32", "bool")
_aten = torch.ops.aten


@dataclass(frozen=True)
class InputSpec:
    """One model input: its shape (batch first) and dtype (``float32``, ``int64``, ``int32``, ``bool``)."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"model input dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if len(self.shape) < 1 or any(int(d) < 1 for d in self.shape):
            raise ConfigError(f"model input shape {list(self.shape)} must be positive dims, batch first")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def example(self, batch: int | None = None) -> torch.Tensor:
        """A correctly typed example: zeros for floats, ones for token ids and masks (id 1, attend)."""
        shape = self.shape if batch is None else (batch, *self.shape[1:])
        fill = torch.zeros if self.dtype == "float32" else torch.ones
        return fill(shape, dtype=self.torch_dtype)


def call_model(model: Any, inputs: Any) -> Any:
    """``model(*inputs)`` for a tuple of inputs, ``model(inputs)`` for one Tensor: a batch is
    ``(inputs, label)`` with ``inputs`` a Tensor or a tuple of Tensors."""
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def input_arrays(specs: Sequence[InputSpec], inputs: Any) -> list[Any]:
    """``inputs`` as contiguous numpy arrays of the declared dtypes, one per spec, batch first.

    ``inputs`` is one array (a one-input model) or a sequence of arrays, one per declared input, each
    numpy or torch, of shape ``(N, *spec.shape[1:])`` with one ``N``. Floats become float32; integer and
    bool inputs (token ids, masks) keep their values in the declared dtype. A mismatch is one
    :class:`ConfigError` line naming the input.
    """
    import numpy as np

    items = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
    if len(items) != len(specs):
        declared = ", ".join(f"{list(s.shape)} {s.dtype}" for s in specs)
        raise ConfigError(f"{len(items)} input array(s) given; the model takes {len(specs)}: {declared}")
    out = []
    for i, (spec, item) in enumerate(zip(specs, items)):
        arr = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
        sample = tuple(spec.shape[1:])
        name = "input" if len(specs) == 1 else f"input {i}"
        if arr.ndim != len(spec.shape) or tuple(arr.shape[1:]) != sample:
            raise ConfigError(f"{name} of shape {tuple(arr.shape)}; this model takes "
                              f"(N, {', '.join(map(str, sample))}) {spec.dtype}" + ("" if len(specs) == 1 else " there"))
        if spec.dtype != "float32" and arr.dtype.kind not in "iub":
            raise ConfigError(f"{name} holds {arr.dtype} values; this model takes {spec.dtype} there "
                              "(token ids or a mask): pass integers")
        out.append(np.ascontiguousarray(arr.astype(spec.dtype, copy=False)))
    if len({a.shape[0] for a in out}) > 1:
        raise ConfigError(f"the model inputs have different batch sizes {[a.shape[0] for a in out]}; give "
                          "one row of every input per sample")
    return out


def as_inputs(inputs: Sequence[int] | Sequence[InputSpec] | InputSpec | torch.Tensor | Sequence[torch.Tensor],
              ) -> tuple[InputSpec, ...]:
    """``(1, 3, 32, 32)`` (one float input, the legacy ``model.input_shape``), a list of specs
    (:class:`InputSpec` or ``{shape, dtype}``), or example tensors, as ``torch.export`` takes them: their
    shapes and dtypes."""
    if isinstance(inputs, (InputSpec, torch.Tensor)):
        inputs = (inputs,)
    items = list(inputs)
    if items and all(isinstance(d, int) for d in items):
        return (InputSpec(tuple(int(d) for d in items)),)
    out = []
    for item in items:
        if isinstance(item, InputSpec):
            out.append(item)
        elif isinstance(item, dict):
            out.append(InputSpec(tuple(int(d) for d in item["shape"]), str(item.get("dtype", "float32"))))
        elif isinstance(item, torch.Tensor):
            out.append(InputSpec(tuple(item.shape), str(item.dtype).removeprefix("torch.")))
        else:
            shown = repr(item) if "\n" not in repr(item) and len(repr(item)) <= 60 else f"of type {type(item).__name__}"
            raise ConfigError(f"model input {shown} is neither a shape, {{shape, dtype}} nor an example tensor; "
                              "write model.inputs=[{shape: [1, 3, 224, 224], dtype: float32}]")
    if not out:
        raise ConfigError("the model has no inputs; set model.input_shape or model.inputs")
    return tuple(out)


@dataclass(frozen=True)
class LayerInfo:
    """Static facts about one quantizable layer."""

    name: str
    kind: str  # "conv2d" | "conv1d" | "linear"
    weight_shape: tuple[int, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def params(self) -> int:
        n = 1
        for d in self.weight_shape:
            n *= d
        return n

    @property
    def macs(self) -> int:
        """Multiply-accumulates per inference (batch included)."""
        per_out = self.params // self.weight_shape[0]
        n = 1
        for d in self.out_shape:
            n *= d
        return n * per_out


@dataclass
class PreparedModel:
    """An eval-mode ``GraphModule`` (exported, BatchNorm folded) and its quantizable layers in graph order.

    ``float_layers`` maps each conv/linear computation left in float to the reason (node name and
    module path in the key). ``inputs`` describes every model input; ``input_shape`` is the first's.
    """

    graph_module: fx.GraphModule
    layers: list[LayerInfo]
    input_shape: tuple[int, ...]
    inputs: tuple[InputSpec, ...] = ()
    float_layers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.inputs:
            self.inputs = (InputSpec(tuple(self.input_shape)),)

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def copy_module(self) -> fx.GraphModule:
        return copy.deepcopy(self.graph_module)

    def example_inputs(self, batch: int | None = None) -> tuple[torch.Tensor, ...]:
        return tuple(spec.example(batch) for spec in self.inputs)

    def random_inputs(self, batch: int | None = None) -> list[Any]:
        """Numpy inputs for timing compiled code: standard normal floats (seed 0, the first input exactly
        as before several inputs existed), ones for token ids and masks."""
        import numpy as np

        rng = np.random.default_rng(0)
        out = []
        for spec in self.inputs:
            shape = spec.shape if batch is None else (batch, *spec.shape[1:])
            out.append(rng.standard_normal(shape).astype("float32") if spec.dtype == "float32"
                       else spec.example(batch).numpy())
        return out


def export_model(model: nn.Module, inputs: tuple[InputSpec, ...]) -> torch.export.ExportedProgram:
    """``torch.export`` ``model`` (non-strict) with a dynamic batch, or one line naming why it cannot."""
    examples = tuple(spec.example(2) for spec in inputs)  # batch 2: 0/1 would specialise the batch dim
    dynamic: tuple = tuple({0: torch.export.Dim.AUTO} for _ in inputs)
    params = list(inspect.signature(model.forward).parameters.values())
    if params and params[0].kind is inspect.Parameter.VAR_POSITIONAL:  # forward(self, *inputs)
        dynamic = (dynamic,)
    try:
        return torch.export.export(model, examples, dynamic_shapes=dynamic, strict=False)
    except Exception as e:  # export raises many types (UserError, GuardOnDataDependent, TypeError...)
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        raise LoweringError(f"torch.export cannot export {type(model).__name__} ({type(e).__name__}: {msg}); "
                            "check model.inputs (shapes, dtypes) and make forward() traceable "
                            "(no data-dependent Python control flow)") from None


def module_path(node: fx.Node) -> str:
    """The module path (``layer1.0.conv1``) that computed ``node``, ``""`` for the model itself."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    return str(list(stack.values())[-1][0])


def where(node: fx.Node) -> str:
    path = module_path(node)
    return f"node {node.name}" + (f" in module {path}" if path else "")


def _attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


_BN = {_aten.batch_norm.default: 5, _aten._native_batch_norm_legit_no_training.default: None}
_CONV = (_aten.conv2d.default, _aten.conv2d.padding, _aten.conv1d.default, _aten.conv1d.padding,
         _aten.convolution.default)
_FLOAT_CONV = {  # conv computations with no integer kernel: listed in float_layers, never dropped silently
    **{getattr(_aten, f"conv_transpose{d}d").input if d > 1 else _aten.conv_transpose1d.default:
       "transposed convolution (no integer kernel)" for d in (1, 2, 3)},
    _aten.conv3d.default: "3-D convolution (only 1-D and 2-D have kernels)",
}
_TRANSPOSES = (_aten.t.default, _aten.transpose.int, _aten.permute.default, _aten.numpy_T.default)


def _conv_args(node: fx.Node) -> dict[str, Any] | None:
    """Normalised conv arguments, or None for a convolution that is not a layer (transposed)."""
    names = ["input", "weight", "bias", "stride", "padding", "dilation"]
    if node.target is _aten.convolution.default:
        names += ["transposed", "output_padding", "groups"]
    else:
        names += ["groups"]
    args = dict(zip(names, node.args))
    args.update(node.kwargs)
    if args.get("transposed"):
        return None
    return args


def _fold_batchnorm(gm: fx.GraphModule) -> None:
    """Fold every eval-mode BatchNorm whose input is a conv used only by it into that conv's weights."""
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or bn.target not in _BN:
            continue
        conv = bn.args[0]
        if not (isinstance(conv, fx.Node) and conv.op == "call_function" and conv.target in _CONV
                and len(conv.users) == 1):
            continue
        if bn.target is _aten.batch_norm.default and bn.args[5]:  # training=True
            continue
        cargs = _conv_args(conv)
        w_node, b_node = (cargs or {}).get("weight"), (cargs or {}).get("bias")
        if cargs is None or not (isinstance(w_node, fx.Node) and w_node.op == "get_attr") or \
                (b_node is not None and not (isinstance(b_node, fx.Node) and b_node.op == "get_attr")):
            continue
        gamma, beta, mean, var = (bn.args[i] for i in range(1, 5))
        if not all(isinstance(n, fx.Node) and n.op == "get_attr" for n in (gamma, beta, mean, var)):
            continue
        eps = bn.args[7] if bn.target is _aten.batch_norm.default else bn.args[6]
        with torch.no_grad():
            w, b = fuse_conv_bn_weights(
                _attr(gm, w_node.target), None if b_node is None else _attr(gm, b_node.target),
                _attr(gm, mean.target), _attr(gm, var.target), float(eps),
                _attr(gm, gamma.target), _attr(gm, beta.target))
        conv.meta["folded"] = (w.detach(), b.detach())
        if bn.target is _aten.batch_norm.default:
            bn.replace_all_uses_with(conv)
        else:  # (out, save_mean, save_invstd): only item 0 may be used
            for user in list(bn.users):
                if user.target is not operator.getitem or user.args[1] != 0:
                    break
                user.replace_all_uses_with(conv)
        gm.graph.erase_node(bn) if not bn.users else None


# ops that only re-view or copy a constant: a chain of them alone is left as it is (matmul-by-constant
# layers see through transposes, and a sliced position-id buffer needs no copy)
_LAYOUT = {*_TRANSPOSES, _aten.view.default, _aten.reshape.default, _aten.unsqueeze.default, _aten.squeeze.dim,
           _aten.slice.Tensor, _aten.select.int, _aten.expand.default, _aten.clone.default, _aten.alias.default,
           _aten.detach.default, _aten.contiguous.default}
FOLD_MAX_ELEMENTS = 1 << 24  # a computed constant larger than this stays a computation (memory)
CONSTANTS = "_mpsearch_constants"  # the submodule holding folded constants


def _in_place(node: fx.Node) -> bool:
    """An in-place op (``relu_``: export's graph keeps them) on a computed value nothing else reads: on
    a copy of that value, it folds like its out-of-place twin."""
    schema = getattr(node.target, "_schema", None)
    if schema is None or not schema.is_mutable or not node.args:
        return False
    first, mutated = node.args[0], [a.alias_info is not None and a.alias_info.is_write for a in schema.arguments]
    return (mutated[:1] == [True] and not any(mutated[1:]) and isinstance(first, fx.Node)
            and first.op == "call_function" and len(first.users) == 1)


def _foldable(node: fx.Node) -> bool:
    if node.op != "call_function" or (node.is_impure() and not _in_place(node)):
        return False
    tags = getattr(node.target, "tags", ())
    return torch.Tag.nondeterministic_seeded not in tags


def _fold_constants(gm: fx.GraphModule) -> int:
    """Compute once what reads no model input, and put the value in the graph as a constant: a conv
    whose weight is computed from parameters (``weight_norm``'s ``g * v / |v|``, weight standardization)
    becomes a layer with a weight, and a linear applied to constants (SwinV2's relative-position MLP on
    a coordinate grid) is no layer at all: its output is a table, not an activation, with no batch to
    measure a sensitivity on. Returns how many values were folded."""
    values: dict[fx.Node, Any] = {}
    computes: dict[fx.Node, bool] = {}  # more than re-viewing a constant
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            values[node], computes[node] = _attr(gm, node.target), False
        elif _foldable(node) and all(n in values for n in node.all_input_nodes):
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: values[n])
            if _in_place(node):
                args = (args[0].clone(), *args[1:])
            try:
                with torch.no_grad():
                    values[node] = node.target(*args, **kwargs)
            except Exception:  # noqa: BLE001 - not computable here: it stays in the graph
                continue
            computes[node] = node.target not in _LAYOUT or any(computes[n] for n in node.all_input_nodes)
    folded = 0
    for node in list(gm.graph.nodes):
        value = values.get(node)
        if node.op != "call_function" or not computes.get(node) or not isinstance(value, torch.Tensor) \
                or value.numel() > FOLD_MAX_ELEMENTS or all(u in values for u in node.users):
            continue  # only the constants that computed values read
        if not hasattr(gm, CONSTANTS):
            gm.add_submodule(CONSTANTS, nn.Module())
        getattr(gm, CONSTANTS).register_buffer(f"c{folded}", value.detach().clone())
        with gm.graph.inserting_before(node):
            const = gm.graph.get_attr(f"{CONSTANTS}.c{folded}")
        const.meta = dict(node.meta)  # nn_module_stack: the layer it feeds keeps its module's name
        node.replace_all_uses_with(const)
        folded += 1
    if folded:
        for node in reversed(list(gm.graph.nodes)):  # what only the folded values read (in-place ops too)
            if node in values and node.op == "call_function" and not node.users:
                gm.graph.erase_node(node)
        gm.graph.eliminate_dead_code()
    return folded


def _constant_weight(gm: fx.GraphModule, node: Any) -> tuple[torch.Tensor, list[fx.Node]] | None:
    """The 2-D ``(in, out)`` constant that ``x @ node`` multiplies by (through transposes), or None."""
    chain: list[fx.Node] = []
    while isinstance(node, fx.Node) and node.op == "call_function" and node.target in _TRANSPOSES:
        chain.append(node)
        node = node.args[0]
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        return None
    w = _attr(gm, node.target)
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        return None
    for t in reversed(chain):  # replay the transposes on the value
        w = t.target(w, *t.args[1:])
        if w.dim() != 2:
            return None
    return w, chain


class _Namer:
    """Layer names, the first that fits of: the module path that computed it (``layer1.0.conv1`` stays
    ``layer1.0.conv1``; a ``Conv2d`` subclass calling ``F.conv2d`` keeps its path), the module owning the
    weight (``out_proj`` for the ``F.linear(x, self.out_proj.weight, ...)`` inside
    ``nn.MultiheadAttention``) -- each only when it is one layer's and holds nothing else the graph
    reads -- else a child of the path (``attn.linear``, ``attn.linear_1``)."""

    def __init__(self, gm: fx.GraphModule, layers: list[tuple[fx.Node, str]]) -> None:
        self.gm = gm
        self.paths: dict[str, int] = {}
        self.owners: dict[str, int] = {}
        for node, owner in layers:
            self.paths[module_path(node)] = self.paths.get(module_path(node), 0) + 1
            self.owners[owner] = self.owners.get(owner, 0) + 1
        self.used: set[str] = set()

    def _whole(self, path: str, own: set[str], counts: dict[str, int], layer: fx.Node) -> bool:
        if not path or counts.get(path, 0) != 1 or path in self.used:
            return False
        for n in self.gm.graph.nodes:
            if n.op not in ("get_attr", "call_module") or not n.users or not n.target.startswith(path + "."):
                continue
            if n.target not in own:
                return False
            # a tied weight read elsewhere too (GPT-2's embedding and lm_head): the module must stay
            if any(u is not layer and not (u.op == "call_function" and u.target in _TRANSPOSES) for u in n.users):
                return False
        return True

    def name(self, node: fx.Node, kind: str, own: set[str], owner: str) -> str:
        """``own``: the attribute targets this layer absorbs (its weight, bias); ``owner``: the module
        holding its ``weight`` ("" if the weight is not a ``.weight``)."""
        path = module_path(node)
        for whole, counts in ((path, self.paths), (owner, self.owners)):
            if self._whole(whole, own, counts, node):
                self.used.add(whole)
                return whole
        base = kind if not path else f"{path}.{kind}"
        name, k = base, 0
        while name in self.used or _exists(self.gm, name):
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name


def _owner(consumed: set[str]) -> str:
    weights = [t for t in consumed if t.endswith(".weight")]
    return weights[0].rpartition(".")[0] if len(weights) == 1 else ""


def _exists(gm: fx.GraphModule, name: str) -> bool:
    try:
        _attr(gm, name)
        return True
    except AttributeError:
        return False


def _parameters(gm: fx.GraphModule, w_node: Any, b_node: Any) -> tuple[Tensor, Tensor | None] | str:
    """The weight and bias (or ``None``) a conv/linear node reads, or why they are not parameters."""
    if not (isinstance(w_node, fx.Node) and w_node.op == "get_attr"):
        return "its weight is computed in the graph, not a parameter"
    if b_node is not None and not (isinstance(b_node, fx.Node) and b_node.op == "get_attr"):
        return "its bias is computed in the graph, not a parameter"
    return _attr(gm, w_node.target), None if b_node is None else _attr(gm, b_node.target)


def _to_layer(gm: fx.GraphModule, node: fx.Node) -> tuple[nn.Module, fx.Node, set[str], str] | str:
    """``(module, input node, consumed attribute targets, kind)`` for a conv/linear node, or the
    reason it stays float."""
    if node.target in _CONV:
        cargs = _conv_args(node)
        if cargs is None:
            return "transposed convolution (no integer kernel)"
        w_node, b_node = cargs["weight"], cargs.get("bias")
        params = _parameters(gm, w_node, b_node)
        if isinstance(params, str):
            return params
        weight, bias = params
        if "folded" in node.meta:
            weight, bias = node.meta["folded"]
        dims = weight.dim() - 2
        if dims not in (1, 2):
            return f"{dims}-D convolution (only 1-D and 2-D have kernels)"
        stride, padding, dilation = (cargs.get(k, d) for k, d in (("stride", 1), ("padding", 0), ("dilation", 1)))
        groups = int(cargs.get("groups", 1))
        if isinstance(padding, str):
            padding = _same_padding(padding, weight.shape[2:], dilation, dims)
            if isinstance(padding, str):
                return padding
        cls = nn.Conv2d if dims == 2 else nn.Conv1d
        tup = lambda v: tuple(int(i) for i in v) * (dims if len(v) == 1 else 1) if isinstance(v, (list, tuple)) \
            else (int(v),) * dims  # noqa: E731
        out_ch, in_per_group = weight.shape[:2]
        mod = cls(in_per_group * groups, out_ch, tuple(weight.shape[2:]), stride=tup(stride), padding=tup(padding),
                  dilation=tup(dilation), groups=groups, bias=bias is not None)
        consumed = {w_node.target} | ({b_node.target} if b_node is not None else set())
        kind = "conv2d" if dims == 2 else "conv1d"
    elif node.target is _aten.linear.default:
        w_node = node.args[1]
        b_node = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        params = _parameters(gm, w_node, b_node)
        if isinstance(params, str):
            return params
        weight, bias = params
        mod = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        consumed = {w_node.target} | ({b_node.target} if b_node is not None else set())
        kind = "linear"
    else:  # matmul / mm by a constant, addmm(bias, x, W) (GPT-2's Conv1D)
        addmm = node.target is _aten.addmm.default
        if addmm and (node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1):
            return "addmm with beta/alpha other than 1"
        found = _constant_weight(gm, node.args[2 if addmm else 1])
        if found is None:
            return "activation x activation matmul (runs in float)"
        w_in_out, chain = found
        weight, bias, b_node = w_in_out.t(), None, None
        if addmm:
            b_node = node.args[0]
            if not (isinstance(b_node, fx.Node) and b_node.op == "get_attr") or _attr(gm, b_node.target).dim() != 1:
                return "addmm whose bias is not a 1-D parameter"
            bias = _attr(gm, b_node.target)
        mod = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        root = chain[-1].args[0] if chain else node.args[2 if addmm else 1]
        consumed = {root.target} | ({b_node.target} if b_node is not None else set())
        kind = "matmul"
    with torch.no_grad():
        mod.weight = nn.Parameter(weight.detach().clone().contiguous(), requires_grad=weight.requires_grad)
        if bias is not None:
            mod.bias = nn.Parameter(bias.detach().clone().contiguous(), requires_grad=bias.requires_grad)
    return mod, node.args[1 if node.target is _aten.addmm.default else 0], consumed, kind


def _same_padding(padding: str, kernel: Sequence[int], dilation: Any, dims: int) -> tuple[int, ...] | str:
    if padding == "valid":
        return (0,) * dims
    dil = tuple(dilation) if isinstance(dilation, (list, tuple)) else (dilation,) * dims
    dil = dil * dims if len(dil) == 1 else dil
    total = [d * (k - 1) for d, k in zip(dil, kernel)]
    if any(t % 2 for t in total):
        return "padding='same' with an even kernel pads unevenly (no integer kernel)"
    return tuple(t // 2 for t in total)


def _is_layer_op(node: fx.Node) -> bool:
    return node.op == "call_function" and (
        node.target in _CONV or node.target is _aten.linear.default
        or node.target in (_aten.matmul.default, _aten.mm.default, _aten.addmm.default))


def prepare_model(
    model: nn.Module, inputs: Sequence[int] | Sequence[InputSpec] | InputSpec | torch.Tensor | Sequence[torch.Tensor],
) -> PreparedModel:
    """Export ``model`` with ``torch.export``, fold BatchNorm into convolutions, turn every conv/linear
    computation into a named layer module, record layer shapes at the declared inputs' batch. The global
    random state is left as it was (new layer modules initialise weights before theirs are copied in)."""
    with torch.random.fork_rng(devices=[]):
        return _prepare(model, inputs)


def _prepare(model: nn.Module, inputs: Any) -> PreparedModel:
    specs = as_inputs(inputs)
    model = copy.deepcopy(model).eval()
    ep = export_model(model, specs)
    gm = ep.module()
    for node in list(gm.graph.nodes):  # export's input guards pin the example shapes; we run any batch
        if node.op == "call_module" and node.target == "_guards_fn":
            gm.graph.erase_node(node)
    if hasattr(gm, "_guards_fn"):
        delattr(gm, "_guards_fn")
    _fold_constants(gm)
    _fold_batchnorm(gm)
    candidates = [(n, "") for n in gm.graph.nodes if _is_layer_op(n)]
    float_layers: dict[str, str] = {where(n): _FLOAT_CONV[n.target] for n in gm.graph.nodes
                                    if n.op == "call_function" and n.target in _FLOAT_CONV}
    converted: list[tuple[fx.Node, tuple]] = []
    for node, _ in candidates:
        result = _to_layer(gm, node)
        if isinstance(result, str):
            if node.target not in (_aten.matmul.default, _aten.mm.default):
                float_layers[where(node)] = result
            elif "activation" not in result:
                float_layers[where(node)] = result
            continue
        converted.append((node, result))
    namer = _Namer(gm, [(n, _owner(r[2])) for n, r in converted])
    kinds: dict[str, str] = {}
    for node, (mod, x_node, consumed, kind) in converted:
        name = namer.name(node, "conv" if kind.startswith("conv") else "linear", consumed, _owner(consumed))
        gm.set_submodule(name, mod) if "." in name else setattr(gm, name, mod)
        with gm.graph.inserting_before(node):
            # the input read now, not x_node: an earlier layer may have replaced that node
            new = gm.graph.call_module(name, (node.args[1 if node.target is _aten.addmm.default else 0],))
        new.meta = dict(node.meta)
        new.meta.pop("folded", None)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        kinds[name] = "linear" if kind == "matmul" else kind
    for node in gm.graph.nodes:  # strides differ between real kernels and re-export's fake ones: let
        if node.op == "call_function" and node.target is _aten.view.default:  # reshape copy when it must
            node.target = _aten.reshape.default
    gm.graph.eliminate_dead_code()
    # a plain GraphModule (export's own refuses .train()/.eval()) holding only what the graph reads
    gm = fx.GraphModule(gm, gm.graph, class_name=type(model).__name__)
    examples = tuple(spec.example() for spec in specs)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*examples)
    except Exception as e:
        raise LoweringError(f"the exported {type(model).__name__} does not run at the declared input shapes "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); check model.inputs") from None
    layers = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in kinds:
            mod = gm.get_submodule(node.target)
            in_meta = node.args[0].meta["tensor_meta"]
            layers.append(LayerInfo(node.target, kinds[node.target], tuple(mod.weight.shape),
                                    tuple(in_meta.shape), tuple(node.meta["tensor_meta"].shape)))
    if not layers:
        raise LoweringError(f"{type(model).__name__} has no conv or linear computation to quantize")
    return PreparedModel(gm, layers, tuple(specs[0].shape), specs, float_layers)


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)
