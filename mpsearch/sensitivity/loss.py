"""The loss as a function of the layers' weights and input perturbations, shared by the gradient-based
sensitivity estimators (Hutchinson, eigenvalue, Fisher, the second-order joint proxy), and the input
checks every estimator makes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from mpsearch.errors import ConfigError
from mpsearch.quant.prepare import QUANTIZABLE
from mpsearch.sensitivity.base import Batch, LayerSensitivity

W_PREFIX = "w:"  # point key of a layer's weights: W_PREFIX + layer name
X_PREFIX = "x:"  # point key of the additive perturbation of a layer's input


def check_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    layers = list(layers)
    if not layers:
        raise ConfigError("no layers to estimate; pass the prepared model's layer names")
    if len(set(layers)) != len(layers):
        raise ConfigError("layer names repeat; pass each layer once")
    for name in layers:
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"unknown layer {name!r}; pass names from PreparedModel.layer_names") from None
        if not isinstance(mod, QUANTIZABLE):
            raise ConfigError(f"layer {name!r} is a {type(mod).__name__}; only Conv2d and Linear have sensitivities")
    return layers


def first_samples(batches: Sequence[Batch], n: int) -> tuple[Tensor, Tensor]:
    xs, ys, have = [], [], 0
    for x, y in batches:
        if have >= n:
            break
        xs.append(x[: n - have])
        ys.append(y[: n - have])
        have += len(xs[-1])
    if have == 0:
        raise ConfigError("the sensitivity data is empty; give at least one non-empty batch")
    return torch.cat(xs), torch.cat(ys)


@contextlib.contextmanager
def layer_loss(
    model: nn.Module, layers: list[str], x: Tensor, y: Tensor, act_batch: int | None = None
) -> Iterator[tuple[dict[str, Tensor], Callable[[dict[str, Tensor]], Tensor]]]:
    """The loss as a function of every layer's weights and an additive perturbation of its input.

    Yields ``(point, loss)``: ``point`` maps ``"w:<layer>"`` to the layer's weights and ``"x:<layer>"``
    to a zero tensor shaped like the layer's input on ``x`` (batch dimension ``act_batch`` if given,
    e.g. 1 for per-sample use under ``vmap``), and ``loss(point)`` is the mean cross-entropy of the
    model on ``(x, y)`` with those weights and input perturbations (a ``torch.func`` function).
    Installs forward pre-hooks on the layers until the context exits.
    """
    in_shapes: dict[str, list[torch.Size]] = {name: [] for name in layers}
    deltas: dict[str, Tensor] = {}
    recording = True

    def make_hook(name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], tuple[Tensor, ...] | None]:
        def hook(_mod: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
            if recording:
                in_shapes[name].append(args[0].shape)
                return None
            return (args[0] + deltas[name],) + tuple(args[1:])
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(make_hook(n)) for n in layers]
    try:
        with torch.no_grad():
            model(x)
        recording = False
        for name, shapes in in_shapes.items():
            if len(shapes) != 1:
                raise ConfigError(f"layer {name!r} runs {len(shapes)} times per forward; "
                                  "give each call its own module")

        fixed = {k: v.detach() for k, v in model.named_parameters()}
        fixed.update({k: v.detach() for k, v in model.named_buffers()})
        for name in layers:
            fixed.pop(f"{name}.weight")

        def loss(point: dict[str, Tensor], inputs: Tensor = x, labels: Tensor = y) -> Tensor:
            weights = {}
            for key, t in point.items():
                if key.startswith(W_PREFIX):
                    weights[f"{key[len(W_PREFIX):]}.weight"] = t
                else:
                    deltas[key[len(X_PREFIX):]] = t
            out = functional_call(model, (fixed, weights), (inputs,))
            return F.cross_entropy(out, labels)

        point = {}
        for name in layers:
            point[W_PREFIX + name] = model.get_submodule(name).weight.detach()
            shape = in_shapes[name][0]
            if act_batch is not None:
                shape = torch.Size((act_batch,) + tuple(shape[1:]))
            point[X_PREFIX + name] = torch.zeros(shape, dtype=x.dtype)
        yield point, loss
    finally:
        for h in handles:
            h.remove()
        deltas.clear()


def layer_sensitivities(
    layers: list[str], point: dict[str, Tensor], weight: dict[str, float], act: dict[str, float],
    n_samples: int | None = None,
) -> dict[str, LayerSensitivity]:
    out = {}
    for name in layers:
        act_numel = point[X_PREFIX + name].numel()
        if n_samples is not None:  # point holds one sample's input; report the whole batch's size
            act_numel = act_numel // point[X_PREFIX + name].shape[0] * n_samples
        out[name] = LayerSensitivity(name=name, weight_trace=weight[name], act_trace=act[name],
                                     weight_numel=point[W_PREFIX + name].numel(), act_numel=act_numel)
    return out


__all__ = ["W_PREFIX", "X_PREFIX", "check_layers", "first_samples", "layer_loss", "layer_sensitivities"]
