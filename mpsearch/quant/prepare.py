"""Turn a user's ``nn.Module`` into the graph every stage works on: traced, BatchNorm folded."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse
from torch.fx.passes.shape_prop import ShapeProp

from mpsearch.errors import LoweringError

QUANTIZABLE = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerInfo:
    """Static facts about one quantizable layer."""

    name: str
    kind: str  # "conv2d" | "linear"
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
    """An eval-mode ``GraphModule`` with BatchNorm folded, and its quantizable layers in graph order."""

    graph_module: fx.GraphModule
    layers: list[LayerInfo]
    input_shape: tuple[int, ...]

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def copy_module(self) -> fx.GraphModule:
        return copy.deepcopy(self.graph_module)


def prepare_model(model: nn.Module, input_shape: tuple[int, ...]) -> PreparedModel:
    """Trace ``model`` with ``torch.fx``, fold BatchNorm into convolutions, record layer shapes."""
    model = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # fx raises many types for untraceable Python control flow
        raise LoweringError(
            f"torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "remove data-dependent control flow from forward()"
        ) from None
    gm = fuse(gm)
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(input_shape))
    layers = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if isinstance(mod, QUANTIZABLE):
            kind = "linear" if isinstance(mod, nn.Linear) else "conv2d"
            in_meta = node.args[0].meta["tensor_meta"]
            layers.append(LayerInfo(node.target, kind, tuple(mod.weight.shape),
                                    tuple(in_meta.shape), tuple(node.meta["tensor_meta"].shape)))
    if not layers:
        raise LoweringError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize")
    return PreparedModel(gm, layers, tuple(input_shape))
