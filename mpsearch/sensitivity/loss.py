"""The loss as a function of the layers' weights and input perturbations, shared by the gradient-based
sensitivity estimators (Hutchinson, eigenvalue, Fisher, Δloss, the second-order joint proxy): which layers
it can differentiate, the reasons others are skipped, and the memory plan of its passes."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from mpsearch.errors import ConfigError
from mpsearch.sensitivity.base import Batch, LayerSensitivity, SensitivityError
from mpsearch.sensitivity.data import Samples, first_samples, objective_loss
from mpsearch.sensitivity.memory import Plan, measure_footprint, plan

log = logging.getLogger(__name__)

W_PREFIX = "w:"
X_PREFIX = "x:"

#: Why a layer that ``forward()`` never calls as a module is skipped.
NOT_CALLED = ("not called by forward() (unused, or its weight is read without calling the module, as "
              "nn.MultiheadAttention does with out_proj)")

# A weight gradient that is not a function of the weights: the loss is never linear in a conv or linear
# layer's weights, so an op on the layer's path has no double backward (a once_differentiable Function).
NO_SECOND = ("no second derivative reaches its weights (an op on its path has no double backward, "
              "e.g. a once_differentiable autograd.Function)")


class RunningMean:
    """Welford mean and variance of a stream of scalars."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self._m2 = 0.0

    def add(self, value: float) -> None:
        self.n += 1
        d = value - self.mean
        self.mean += d / self.n
        self._m2 += d * (value - self.mean)

    def rel_stderr(self) -> float:
        if self.n < 2:
            return math.inf
        se = math.sqrt(self._m2 / (self.n - 1) / self.n)
        if self.mean == 0.0:
            return 0.0 if se == 0.0 else math.inf
        return se / abs(self.mean)


def check_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """The layer names, checked: each once, each a submodule with a weight tensor (conv 1-D/2-D/3-D,
    linear, or any module that keeps its weight as ``.weight``)."""
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
        if not isinstance(getattr(mod, "weight", None), Tensor):
            raise ConfigError(f"layer {name!r} is a {type(mod).__name__} without a weight tensor; "
                              "only layers with weights (conv, linear) have sensitivities")
    return layers


@torch.no_grad()
def called_layers(model: nn.Module, layers: Sequence[str], samples: Samples) -> set[str]:
    """The layers ``forward()`` calls on ``samples``."""
    seen: set[str] = set()
    handles = [model.get_submodule(n).register_forward_pre_hook(lambda _m, _a, n=n: seen.add(n)) for n in layers]
    was_training = model.training
    try:
        model.eval()
        model(*samples.inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def _relu6(x: Tensor) -> Tensor:
    return torch.clamp(x + 3.0, 0.0, 6.0)


class _TwiceDifferentiable(TorchFunctionMode):
    """``hardsigmoid`` and ``hardswish`` (MobileNetV3's activations) as ``relu6(x + 3) / 6`` and
    ``x * relu6(x + 3) / 6``: the same values and first derivatives (but at the kinks ``x = ±3``), built
    from ops that have double backward and forward-mode derivatives (torch's hardsigmoid kernel has
    neither). Catches the module and functional calls (``nn.Hardswish``, ``F.hardsigmoid``) and an
    exported graph's aten ops."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        # torch's kernels' formulas in their order of operations: the same values bit for bit
        if func in _HARDSIGMOID:
            return _relu6(args[0]) / 6.0
        if func in _HARDSWISH:
            return args[0] * _relu6(args[0]) / 6.0
        return func(*args, **kwargs)


_HARDSIGMOID = {F.hardsigmoid, torch.ops.aten.hardsigmoid.default}
_HARDSWISH = {F.hardswish, torch.ops.aten.hardswish.default}


@contextlib.contextmanager
def second_order_ops() -> Iterator[None]:
    """Ops with second derivatives: the math kernel of ``F.scaled_dot_product_attention`` (the fused CPU
    and flash kernels have no double backward), and twice-differentiable ``hardsigmoid``/``hardswish``
    (:class:`_TwiceDifferentiable`), exact in value."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH), _TwiceDifferentiable():
        yield


@contextlib.contextmanager
def derivative_errors(estimator: str) -> Iterator[None]:
    """Turn an error of autograd or ``torch.func`` on the user's model into one :class:`SensitivityError`
    line naming the fix (the traceback goes to the debug log)."""
    try:
        yield
    except (RuntimeError, NotImplementedError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.debug("%s failed", estimator, exc_info=True)
        raise SensitivityError(
            f"{estimator}: cannot differentiate this model ({type(e).__name__}: {first}); use "
            "search.sensitivity=delta_kl, which needs no derivatives") from None


@dataclasses.dataclass
class LossContext:
    """The loss as a function of every live layer's weights and an additive perturbation of its input.

    Attributes:
        layers: The layers asked for, in order.
        live: Those with sensitivities; the others are in ``skipped`` with the reason.
        skipped: ``{layer: reason}`` of layers no derivative can be taken for (never called by
            ``forward()``, no gradient reaching them, input not batch-first or not float).
        calls: How often each live layer runs per forward (a perturbation per call).
        total: Samples the mean loss is over (a chunk's loss is its share of that mean).
        weight_only: Live layers whose module ``forward()`` never calls but whose weight it reads
            directly (``nn.MultiheadAttention``'s ``out_proj``): a weight term, no activation term.
    """

    layers: list[str]
    live: list[str]
    skipped: dict[str, str]
    calls: dict[str, int]
    total: int
    _shapes: dict[str, tuple[int, ...]]
    _dtypes: dict[str, torch.dtype]
    _weights: dict[str, Tensor]
    _call: Callable[[dict[str, Tensor], Samples], Tensor]
    weight_only: set[str] = dataclasses.field(default_factory=set)

    def keys(self) -> list[str]:
        return [k for name in self.live for k in (W_PREFIX + name, X_PREFIX + name)
                if not (k.startswith(X_PREFIX) and name in self.weight_only)]

    def act_shape(self, name: str, n: int) -> tuple[int, ...]:
        """Shape of layer ``name``'s input perturbation on ``n`` samples (a leading call axis if it runs
        more than once per forward)."""
        shape = (n, *self._shapes[name])
        return (self.calls[name], *shape) if self.calls[name] > 1 else shape

    def point(self, n: int) -> dict[str, Tensor]:
        """Weights and zero input perturbations for a chunk of ``n`` samples (``n=1`` inside ``vmap``)."""
        out = {}
        for name in self.live:
            out[W_PREFIX + name] = self._weights[name]
            if name not in self.weight_only:
                out[X_PREFIX + name] = torch.zeros(self.act_shape(name, n), dtype=self._dtypes[name])
        return out

    def loss(self, point: dict[str, Tensor], samples: Samples) -> Tensor:
        """The objective on ``samples`` at ``point`` (a ``torch.func`` function of ``point``)."""
        return self._call(point, samples)

    def act_numel(self, name: str, n: int) -> int:
        return 0 if name in self.weight_only else int(math.prod(self.act_shape(name, n)))


@contextlib.contextmanager
def layer_loss(model: nn.Module, layers: list[str], samples: Samples, total: int | None = None,
               check_gradients: bool = True) -> Iterator[LossContext]:
    """The loss on ``samples`` (or any chunk of the same data) as a function of the layers' weights and inputs.

    Records the layers' input shapes with one forward pass on ``samples``, then installs forward
    pre-hooks that add each ``"x:<layer>"`` perturbation to the layer's input, until the context exits.
    Each layer's weight is substituted by name through ``functional_call`` without weight tying, so a
    weight shared by two layers gets a derivative per use (the additive score's per-layer view).
    ``check_gradients`` runs one reverse pass on the first sample to find layers no gradient reaches.
    """
    total = len(samples) if total is None else int(total)
    n = len(samples)
    shapes: dict[str, list[torch.Size]] = {name: [] for name in layers}
    dtypes: dict[str, torch.dtype] = {}
    deltas: dict[str, Tensor] = {}
    call_index: dict[str, int] = {}
    recording = True
    multi: set[str] = set()
    flat: set[str] = set()  # inputs of (n * k, ...) rows: perturbed per sample as (n, k, ...)
    interleaved: set[str] = set()  # of those, rows (k, n) flattened: sequence-first (T * B, D)
    batch_axis: dict[str, int] = {}  # inputs with the batch on this axis (> 0): (T, B, D) sequence-first
    probe: dict[str, Tensor] = {}  # a layer's input, recorded by the sample-order probe

    def make_hook(name: str) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...] | None]:
        def hook(_mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if recording:
                if args and isinstance(args[0], Tensor):
                    shapes[name].append(args[0].shape)
                    dtypes[name] = args[0].dtype
                    if probing and name not in probe:
                        probe[name] = args[0].detach().clone()
                return None
            delta = deltas.get(name)
            if delta is None:
                return None
            if name in multi:
                i = call_index.get(name, 0)
                call_index[name] = i + 1
                delta = delta[i]
            if name in interleaved:  # (n, k, ...) per sample onto the layer's (k * n, ...) input
                delta = delta.transpose(0, 1)
            if name in flat:  # (n, k, ...) per sample onto the layer's (n * k, ...) input
                delta = delta.reshape(args[0].shape)
            elif name in batch_axis:  # (n, T, ...) per sample onto the layer's (T, n, ...) input
                delta = delta.movedim(0, batch_axis[name])
            return (args[0] + delta,) + tuple(args[1:])
        return hook

    probing = False
    handles = [model.get_submodule(name).register_forward_pre_hook(make_hook(name)) for name in layers]
    try:
        with torch.no_grad():
            model(*samples.inputs)
            first = {name: got[0][0] for name, got in shapes.items() if got and len(got[0])}
            rows: dict[str, int] = {}
            if any(f != n for f in first.values()) or n == 1:
                # Where a layer input's batch is not its first dimension alone: the axis that scales with a
                # second batch size. Its first dimension may hold the batch flattened with other axes (GPT-2's
                # Conv1D: (n * tokens, features)): rows per sample; or the batch may be a later axis
                # (a sequence-first transformer, nn.TransformerEncoder's default: (tokens, n, features)).
                m = 1 if n > 1 else 2
                other = samples.slice(0, 1).inputs if n > 1 else tuple(torch.cat([t, t]) for t in samples.inputs)
                kept = {name: list(got) for name, got in shapes.items()}
                for got in shapes.values():
                    got.clear()
                model(*other)
                for name, f in first.items():
                    if not shapes[name] or len(shapes[name][0]) != len(kept[name][0]):
                        continue
                    a, b = kept[name][0], shapes[name][0]
                    moved = [d for d in range(len(a)) if a[d] != b[d]]
                    if moved == [0] and f % n == 0 and b[0] == f // n * m:
                        rows[name] = f // n
                    elif len(moved) == 1 and a[moved[0]] == n and b[moved[0]] == m:
                        batch_axis[name] = moved[0]
                if n > 1 and any(k > 1 for k in rows.values()):
                    # whose rows are sample 0's: the first k ((n, k) flattened) or every n-th ((k, n): a
                    # sequence-first model's (T * B, D)); seen by giving sample 0 sample 1's inputs
                    probing = True
                    runs = []
                    for inputs in (samples.inputs, tuple(torch.cat([t[1:2], t[1:]]) for t in samples.inputs)):
                        probe.clear()
                        model(*inputs)
                        runs.append(dict(probe))
                    probing = False
                    for name, k in rows.items():
                        if k > 1 and name in runs[0] and name in runs[1]:
                            changed = (runs[0][name] != runs[1][name]).reshape(n * k, -1).any(1)
                            if not bool(changed.any()) or not bool(changed[k:].any()):
                                continue  # (n, k): as assumed (or nothing to tell by)
                            if not bool(changed.reshape(k, n)[:, 1:].any()):
                                interleaved.add(name)
                            else:
                                rows[name] = 0  # neither: not per sample (skipped below)
                    probe.clear()
                shapes.update(kept)
        recording = False
        skipped: dict[str, str] = {}
        calls: dict[str, int] = {}
        per_sample: dict[str, tuple[int, ...]] = {}
        weight_only: set[str] = set()
        for name in layers:
            got = shapes[name]
            if not got:  # unused, or its weight read directly: the gradient check tells them apart
                weight_only.add(name)
                calls[name] = 0
            elif len(set(got)) > 1:
                skipped[name] = f"called {len(got)} times per forward on inputs of different shapes"
            elif not dtypes[name].is_floating_point:
                skipped[name] = f"its input is {dtypes[name]}, not float"
            elif len(got[0]) == 0 or rows.get(name) == 0 or (
                    rows.get(name, 1) == 1 and got[0][0] != n and name not in batch_axis):
                skipped[name] = (f"its input {tuple(got[0])} does not hold the batch ({n}) on one axis, or as "
                                 "rows of one sample after another; sensitivities need per-sample layer inputs")
            else:
                calls[name] = len(got)
                axis = batch_axis.get(name, 0)
                per_sample[name] = (*got[0][:axis], *got[0][axis + 1:])
                if rows.get(name, 1) > 1:
                    flat.add(name)
                    per_sample[name] = (rows[name], *per_sample[name])
                if len(got) > 1:
                    multi.add(name)

        live = [name for name in layers if name not in skipped]
        layer_weights = {f"{name}.weight" for name in live}
        fixed = {k: v.detach() for k, v in model.named_parameters(remove_duplicate=False) if k not in layer_weights}
        fixed.update({k: v.detach() for k, v in model.named_buffers(remove_duplicate=False)
                      if k not in layer_weights})

        def call(point: dict[str, Tensor], part: Samples) -> Tensor:
            weights = {}
            for key, t in point.items():
                if key.startswith(W_PREFIX):
                    weights[f"{key[len(W_PREFIX):]}.weight"] = t
                else:
                    deltas[key[len(X_PREFIX):]] = t
            call_index.clear()
            assert part.target is not None
            out = functional_call(model, (fixed, weights), part.inputs, tie_weights=False)
            deltas.clear()  # the hooks have used them; the graph keeps what it needs
            return objective_loss(out, part.objective, part.target, total)

        ctx = LossContext(list(layers), live, skipped, calls, total, per_sample, dtypes,
                          {name: model.get_submodule(name).weight.detach() for name in layers}, call, weight_only)
        if live:
            drop_disconnected(ctx, samples.slice(0, 1), check_gradients)
        for name in ctx.weight_only & set(ctx.live):
            log.info("layer %s: forward() reads its weight without calling the module; weight term only", name)
        for name, why in ctx.skipped.items():
            log.info("layer %s skipped: %s", name, why)
        yield ctx
    finally:
        for h in handles:
            h.remove()
        deltas.clear()


def drop_disconnected(ctx: LossContext, one: Samples, check_gradients: bool = True) -> None:
    """Move layers whose weights no gradient reaches (never used, output detached or not reaching the loss)
    to skipped; without ``check_gradients`` only the layers never called as a module."""
    if not check_gradients:  # cannot tell an unused module from a weight read directly: skip both
        keys = [W_PREFIX + name for name in ctx.live if name in ctx.weight_only]
        grads: Any = [None] * len(keys)
    else:
        point = ctx.point(len(one))
        keys = list(point)
        at = [point[k].detach().clone().requires_grad_(True) for k in keys]
        with torch.enable_grad():
            loss = ctx.loss(dict(zip(keys, at)), one)
            grads = torch.autograd.grad(loss, at, allow_unused=True) if loss.requires_grad else [None] * len(at)
    for key, g in zip(keys, grads):
        name = key[len(W_PREFIX):]
        if key.startswith(W_PREFIX) and g is None:
            ctx.skipped[name] = NOT_CALLED if name in ctx.weight_only else (
                "no gradient reaches its weights (its output is detached or does not reach the loss)")
    ctx.live = [name for name in ctx.live if name not in ctx.skipped]


def layer_sensitivities(ctx: LossContext, weight: dict[str, float], act: dict[str, float], n_samples: int,
                   ) -> dict[str, LayerSensitivity]:
    """Results in the order asked, skipped layers with zero coefficients and their reason."""
    out = {}
    for name in ctx.layers:
        if name in ctx.skipped:
            out[name] = LayerSensitivity(name, 0.0, 0.0, ctx._weights[name].numel(), 0, skipped=ctx.skipped[name])
            continue
        out[name] = LayerSensitivity(name=name, weight_trace=weight[name], act_trace=act[name],
                                     weight_numel=ctx._weights[name].numel(),
                                     act_numel=ctx.act_numel(name, n_samples))
    return out


def plan_samples(estimator: str, model: nn.Module, layers: Sequence[str], samples: Samples, kind: str,
                 requested: int, auto: bool, rows: int = 1) -> Plan:
    """The memory plan of an estimator on ``samples`` (see :mod:`mpsearch.sensitivity.memory`)."""
    footprint = measure_footprint(model, layers, samples)
    return plan(estimator, footprint, kind, requested, len(samples), auto, rows)



def planned(est: Any, model: nn.Module, layers: Sequence[str], samples: Samples, rows: int = 1) -> Plan:
    """``est``'s memory plan on ``samples``: the one :func:`resolved` fixed, or a new one."""
    fixed = getattr(est, "_plan", None)
    if fixed is not None and fixed.samples == min(est.batch_size, len(samples)):
        p = fixed
    else:
        p = plan_samples(est.name, model, layers, samples, est.kind, est.batch_size, est.auto_samples, rows)
    limit = getattr(est, "max_pass", None)  # samples per pass the estimator allows at most
    if limit is not None and limit < p.per_pass:
        p = dataclasses.replace(p, per_pass=limit)
    return p


def resolved(est: Any, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch], rows: int = 1) -> Any:
    """A copy of ``est`` with its automatic sample count fixed for this model and memory (so the cache
    key names the count the result is computed with); ``est`` itself when the count is not automatic."""
    if not est.auto_samples:
        return est
    import copy

    layers = check_layers(model, layers)
    samples = first_samples(batches, est.batch_size)
    was_training = model.training
    model.eval()
    try:
        p = plan_samples(est.name, model, layers, samples, est.kind, est.batch_size, True, rows)
    finally:
        model.train(was_training)
    out = copy.copy(est)
    out.batch_size = p.samples
    out.auto_samples = False
    out._plan = p
    return out
