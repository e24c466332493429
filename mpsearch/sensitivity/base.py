"""The sensitivity seam: per-layer Hessian traces, and the additive score the search minimises."""

from __future__ import annotations

import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mpsearch.candidate import FLOAT_BITS, check_bits
from mpsearch.errors import ConfigError, MPSearchError
from mpsearch.quant.fake import ActQuant, fake_quant_act, weight_error
from mpsearch.sensitivity.data import Batch, as_inputs

log = logging.getLogger(__name__)


class SensitivityError(MPSearchError):
    """An estimator cannot run on this model at all (e.g. an op without the derivatives it needs)."""


@dataclass(frozen=True)
class LayerSensitivity:
    """Sensitivity of one layer: curvature coefficients, or measured loss increases.

    Curvature estimators fill the two coefficients, so that ``0.5 * c * ‖ΔW‖²`` estimates the loss
    increase of a weight perturbation ``ΔW`` (and likewise for the input activations):
    Hutchinson the mean Hessian diagonal ``tr(H) / n``, the eigenvalue estimator the top eigenvalue
    of the Hessian block, Fisher the mean squared gradient (the empirical Fisher diagonal).
    The measuring estimator fills ``delta_loss`` instead, and the score uses it as is.

    Attributes:
        name: Layer name (a submodule path of the model).
        weight_trace: Curvature coefficient of the layer's weights (for Hutchinson the mean
            Hessian diagonal over the weights, ``tr(H_W) / n_W``).
        act_trace: Curvature coefficient of the layer's input activations (for Hutchinson
            ``tr(H_X) / n_X``, where ``X`` is the whole input tensor of the batch the estimate used).
        weight_numel: ``n_W``.
        act_numel: ``n_X``, elements of the input tensor over that batch; 0 for a layer whose module
            ``forward()`` never calls but whose weight it reads (no activation term).
        delta_loss: Measured increase of the mean loss when only this layer is quantized to each
            ``(w_bits, a_bits)`` pair; ``None`` for curvature estimators.
        skipped: Why the estimator could not assess the layer (never called by ``forward()``, no
            gradient reaching it, ...), ``None`` when it did. A skipped layer has zero coefficients;
            it scores its ``delta_loss`` where that was measured in its place
            (:func:`~mpsearch.sensitivity.delta_loss.measure_skipped`), else 0 at every precision.
    """

    name: str
    weight_trace: float
    act_trace: float
    weight_numel: int
    act_numel: int
    delta_loss: dict[tuple[int, int], float] | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class SensitivityResult:
    """Sensitivities of all layers from one estimator run, ordered like the model's layers.

    ``samples`` is how many samples the estimate used (0 where unknown: results cached before it was
    recorded); ``skipped()`` lists the layers the estimator could not assess, with the reason.
    """

    estimator: str
    layers: dict[str, LayerSensitivity] = field(default_factory=dict)
    iterations: int = 0
    seconds: float = 0.0
    samples: int = 0

    def skipped(self) -> dict[str, str]:
        """``{layer: reason}`` of the layers the estimator skipped."""
        return {n: s.skipped for n, s in self.layers.items() if s.skipped is not None}

    def to_json(self) -> str:
        return json.dumps({
            "estimator": self.estimator,
            "layers": [_layer_json(s) for s in self.layers.values()],
            "iterations": self.iterations,
            "seconds": self.seconds,
            "samples": self.samples,
        })

    @classmethod
    def from_json(cls, text: str) -> SensitivityResult:
        """Parse :meth:`to_json` output; raises :class:`ConfigError` on malformed input."""
        try:
            data: Any = json.loads(text)
            layers = {}
            for item in data["layers"]:
                measured = item.get("delta_loss")
                if measured is not None:
                    measured = {(int(w), int(a)): float(v) for w, a, v in measured}
                skipped = item.get("skipped")
                s = LayerSensitivity(str(item["name"]), float(item["weight_trace"]),
                                     float(item["act_trace"]), int(item["weight_numel"]),
                                     int(item["act_numel"]), measured, None if skipped is None else str(skipped))
                layers[s.name] = s
            return cls(str(data["estimator"]), layers, int(data["iterations"]), float(data["seconds"]),
                       int(data.get("samples", 0)))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"sensitivity result JSON is invalid ({type(e).__name__}: {e}); delete it and recompute"
            ) from None


def _layer_json(s: LayerSensitivity) -> dict[str, Any]:
    d = asdict(s)
    if s.skipped is None:
        del d["skipped"]  # results without skipped layers keep the JSON they had
    if s.delta_loss is not None:
        d["delta_loss"] = [[w, a, v] for (w, a), v in s.delta_loss.items()]
    return d


class SensitivityEstimator(ABC):
    """Estimates how much each layer's quantization raises the loss (curvature or measured).

    Contract:
        * Call :meth:`estimate` once per (model, data); the model is any module (a prepared
          ``torch.fx`` or ``torch.export`` graph, or the user's own), eval mode, BatchNorm folded,
          called as ``model(*inputs)`` on batches of ``(inputs, label)`` (:mod:`mpsearch.sensitivity.data`:
          several inputs, no labels, non-logit outputs), and ``layers`` are names of its submodules
          with a ``weight`` (conv, linear). The result lists the layers in the order given.
        * A layer the estimator cannot assess is in the result with ``skipped`` set to the reason
          (and zero coefficients), never an exception; an estimator that cannot run on the model at
          all raises one :class:`SensitivityError` line naming the fix.
        * Memory: the samples run in passes sized to fit the available memory; an automatic sample
          count is fixed by :meth:`resolve`, which :func:`~mpsearch.sensitivity.cache.cached_estimate`
          calls before computing the cache key.
        * The model's parameters and training flag are left as they were.
        * Given the same model, data and constructor arguments (seed included), the result is the
          same up to float rounding; :meth:`config_key` returns exactly those arguments.
        * The estimator caches nothing itself; callers cache results by content through
          :func:`mpsearch.sensitivity.cache.cached_estimate`, keyed on ``name``, :meth:`config_key`,
          the model's state dict and the data.
        * Not thread-safe: an estimate may install temporary hooks on the model.
    """

    name: str = "abstract"

    @abstractmethod
    def estimate(
        self, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch]
    ) -> SensitivityResult:
        """Return the sensitivity of each named layer on ``batches`` of ``(inputs, labels)``.

        The result's ``seconds`` is the estimator's wall time.
        """

    def config_key(self) -> dict[str, Any]:
        """The constructor parameters that determine the result (part of the cache key)."""
        return {}

    def resolve(self, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch]) -> SensitivityEstimator:
        """This estimator with every setting that depends on the model and the machine (an automatic
        sample count) fixed, so :meth:`config_key` names what the result is computed with."""
        return self


def _input_error_per_element(
    model: nn.Module,
    layers: Sequence[str],
    ranges: Mapping[str, tuple[float, float]],
    a_bits: Sequence[int],
    batches: Sequence[Batch],
) -> dict[str, dict[int, float]]:
    """Mean squared activation-quantization error per input element, per layer and bit-width."""
    sums = {name: {b: 0.0 for b in a_bits} for name in layers}
    counts = {name: 0 for name in layers}
    quants = {name: {b: ActQuant.for_layer(ranges, name, b) for b in a_bits} for name in layers}
    handles = []
    for name in layers:
        def hook(_mod: nn.Module, args: tuple[Tensor, ...], name: str = name) -> None:
            x = args[0].detach().float()
            counts[name] += x.numel()
            for b, q in quants[name].items():
                sums[name][b] += float((fake_quant_act(x, q) - x).pow(2).sum())
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for inputs, _ in batches:
                model(*as_inputs(inputs))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    out = {}
    for name in layers:
        if counts[name] == 0:
            raise ConfigError(f"layer {name!r} saw no input; give act_batches at least one non-empty batch")
        out[name] = {b: sums[name][b] / counts[name] for b in a_bits}
    return out


def _measured_row(s: LayerSensitivity, pairs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], float]:
    assert s.delta_loss is not None
    row = {}
    for w, a in pairs:
        if (w, a) == (FLOAT_BITS, FLOAT_BITS):
            row[(w, a)] = 0.0
            continue
        if (w, a) not in s.delta_loss:
            raise ConfigError(f"layer {s.name!r} has no measured loss change at W{w}A{a}; "
                              "re-estimate delta_loss with the search's bit pairs")
        value = s.delta_loss[(w, a)]
        if not math.isfinite(value):
            raise ConfigError(f"layer {s.name!r} has a non-finite loss change at W{w}A{a}; re-estimate")
        row[(w, a)] = max(value, 0.0)
    return row


def score_table(
    model: nn.Module,
    sens: SensitivityResult,
    ranges: Mapping[str, tuple[float, float]],
    pairs: Sequence[tuple[int, int]],
    act_batches: Sequence[Batch],
) -> dict[str, dict[tuple[int, int], float]]:
    """Additive second-order loss increase of each layer at each (weight, activation) bit pair.

    ``score[layer][(w, a)] = 0.5 * t_W * ‖Q_w(W) − W‖² + 0.5 * t_X * ‖Q_a(X) − X‖²`` (HAWQ-V2/V3),
    where ``‖Q_a(X) − X‖²`` is the mean squared error per element over ``act_batches`` times
    ``act_numel``, so both terms estimate the increase of the mean loss on the estimator's batch.
    ``t`` are the result's curvature coefficients (see :class:`LayerSensitivity`). A layer with
    measured ``delta_loss`` scores that measurement instead. Negative coefficients and loss changes
    (non-convex points, noise) are clamped to 0, so scores are ≥ 0; 32 bits gives a zero term.

    Args:
        model: The model the sensitivities were estimated on (weights are read from it).
        sens: Output of a :class:`SensitivityEstimator`.
        ranges: Calibrated ``(lo, hi)`` input range of each layer.
        pairs: The bit pairs to score.
        act_batches: Data for the activation error, e.g. the calibration batches.
    """
    pairs = [check_bits(*p) for p in pairs]
    layers = list(sens.layers)
    a_bits = sorted({a for _, a in pairs if a < FLOAT_BITS})
    # a skipped layer, or one whose module is never called (its weight read directly), has no input term
    has_input = [n for n in layers if sens.layers[n].skipped is None and sens.layers[n].act_numel > 0]
    missing = [n for n in has_input if n not in ranges]
    if a_bits and missing:
        raise ConfigError(f"layer {missing[0]!r} has no calibrated activation range; calibrate it first")
    for name in layers:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"layer {name!r} of the sensitivity result is not in the model; re-estimate") from None
    for name, why in sens.skipped().items():
        then = "scored by its measured loss change" if sens.layers[name].delta_loss is not None else \
            "it scores 0 at every precision"
        log.warning("%s skipped layer %s (%s); %s", sens.estimator, name, why, then)
    curvature = [n for n in has_input if sens.layers[n].delta_loss is None]
    act_err = _input_error_per_element(model, curvature, ranges, a_bits, act_batches) if a_bits and curvature else {}
    table: dict[str, dict[tuple[int, int], float]] = {}
    for name in layers:
        s = sens.layers[name]
        if s.delta_loss is not None:  # measured, by the estimator or in place of a layer it skipped
            table[name] = _measured_row(s, pairs)
            continue
        if s.skipped is not None:
            table[name] = {(w, a): 0.0 for w, a in pairs}
            continue
        weight = model.get_submodule(name).weight
        t_w = max(s.weight_trace, 0.0)
        t_x = max(s.act_trace, 0.0)
        w_err = {w: weight_error(weight, w) for w in {w for w, _ in pairs if w < FLOAT_BITS}}
        row = {}
        for w, a in pairs:
            score = 0.0
            if w < FLOAT_BITS:
                score += 0.5 * t_w * w_err[w]
            if a < FLOAT_BITS and s.act_numel > 0:
                score += 0.5 * t_x * act_err[name][a] * s.act_numel
            if not math.isfinite(score):
                raise ConfigError(f"layer {name!r} has a non-finite score at W{w}A{a}; re-estimate the traces")
            row[(w, a)] = score
        table[name] = row
    return table
