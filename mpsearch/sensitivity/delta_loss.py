"""Measured loss increase when only one layer is quantized, per layer and bit pair."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from mpsearch.candidate import FLOAT_BITS, Bits, check_bits
from mpsearch.errors import ConfigError
from mpsearch.quant.fake import (
    INPUT_MEAN,
    WEIGHT_GRID,
    ActQuant,
    corrected_bias,
    fake_quant_act,
    fake_quant_weight,
    weight_grid_tag,
)
from mpsearch.sensitivity.base import Batch, LayerSensitivity, SensitivityEstimator, SensitivityResult
from mpsearch.sensitivity.data import Samples, first_samples, objective_loss, with_objective
from mpsearch.sensitivity.loss import NOT_CALLED, check_layers, planned, resolved

log = logging.getLogger(__name__)


class DeltaLossEstimator(SensitivityEstimator):
    """``L(model with only layer ℓ at (w, a)) − L(model)`` on the data, for every layer and pair.

    With ``metric="kl"`` (registered as ``delta_kl``) the measurement is instead the mean
    ``KL(p_fp32 ‖ p_quant)`` of the predictions: it needs no labels and, being a sum of squares to
    first order rather than a difference of two noisy losses, ranks candidates far more steadily
    on a small batch (see ``benchmarks/proxy_validation.py``). Where the output is not ``(N, C)``
    logits it is the squared error to the FP32 output instead, and ``metric="loss"`` without class
    labels measures the same label-free objectives (:mod:`mpsearch.sensitivity.data`).

    Forward passes only, in passes sized to the memory budget; a layer ``forward()`` never calls is
    skipped (its loss changes are 0).

    The layer runs the same fake quantization as :func:`mpsearch.quant.fake.quantize_` (so the
    calibrated ``ranges`` are part of the estimator's configuration and of its cache key). No
    approximation beyond additivity across layers; costs one forward pass per (layer, pair).

    Args:
        ranges: Calibrated ``(lo, hi)`` input range of each layer.
        pairs: The ``(w_bits, a_bits)`` pairs to measure (W32A32 is 0 by definition and skipped).
        batch_size: Samples used, the first of the concatenated batches.
        metric: ``"loss"`` (cross-entropy increase) or ``"kl"`` (divergence from the FP32 predictions).
        auto_samples: Use fewer samples where a pass of ``batch_size`` would not fit in memory.
    """

    name = "delta_loss"
    kind = "forward"
    METRICS = ("loss", "kl")

    def __init__(self, ranges: Mapping[str, tuple[float, float]], pairs: Sequence[Bits],
                 batch_size: int = 128, metric: str = "loss", auto_samples: bool = True) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if metric not in self.METRICS:
            raise ConfigError(f"metric {metric!r} is unknown; use one of {', '.join(self.METRICS)}")
        self.metric = metric
        if metric == "kl":
            self.name = "delta_kl"
        self.ranges = {str(k): (float(lo), float(hi)) for k, (lo, hi) in ranges.items()}
        self.pairs = [p for p in dict.fromkeys(check_bits(*p) for p in pairs) if p != (FLOAT_BITS, FLOAT_BITS)]
        self.batch_size = int(batch_size)
        self.auto_samples = bool(auto_samples)

    def config_key(self) -> dict[str, Any]:
        key = {"ranges": {k: list(v) for k, v in sorted(self.ranges.items())},
               "pairs": [list(p) for p in self.pairs], "batch_size": self.batch_size}
        if self.metric != "loss":  # keeps the cache keys of earlier delta_loss results
            key["metric"] = self.metric
        if weight_grid_tag(self.pairs):  # likewise: only results with clipped-grid weights moved
            key["weight_grid"] = WEIGHT_GRID
        return key

    def resolve(self, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch]) -> DeltaLossEstimator:
        return resolved(self, model, layers, batches)

    @torch.no_grad()
    def estimate(self, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch]) -> SensitivityResult:
        start = time.perf_counter()
        layers = check_layers(model, layers)
        samples = first_samples(batches, self.batch_size)
        was_training = model.training
        model.eval()
        try:
            p = planned(self, model, layers, samples)
            samples = self._with_metric(model, samples.slice(0, p.samples), p.per_pass)
            sizes: dict[str, int] = {name: 0 for name in layers}
            base = self._loss(model, samples, p.per_pass, layers, sizes)
            if any(a < FLOAT_BITS for _, a in self.pairs):
                missing = [n for n in layers if n not in self.ranges and sizes[n] > 0]  # unused: skipped below
                if missing:
                    raise ConfigError(f"layer {missing[0]!r} has no calibrated activation range; calibrate it first")
            out = {}
            for name in layers:
                layer = model.get_submodule(name)
                if sizes[name] == 0:
                    out[name] = LayerSensitivity(name, 0.0, 0.0, layer.weight.numel(), 0,
                                                 {pair: 0.0 for pair in self.pairs}, NOT_CALLED)
                    log.info("%s: layer %s skipped: %s", self.name, name, NOT_CALLED)
                    continue
                measured = {}
                for w, a in self.pairs:
                    act = ActQuant.for_layer(self.ranges, name, a) if a < FLOAT_BITS else None
                    handle = layer.register_forward_hook(_quantized_output(layer, w, act))
                    try:
                        measured[(w, a)] = self._loss(model, samples, p.per_pass) - base
                    finally:
                        handle.remove()
                out[name] = LayerSensitivity(name, 0.0, 0.0, layer.weight.numel(), sizes[name], measured)
        finally:
            model.train(was_training)
        seconds = time.perf_counter() - start
        log.info("%s: %d layers x %d pairs, %d samples in %.1f s",
                 self.name, len(layers), len(self.pairs), len(samples), seconds)
        return SensitivityResult(self.name, out, len(layers) * len(self.pairs) + 1, seconds, samples=len(samples))

    def _with_metric(self, model: nn.Module, samples: Samples, per_pass: int) -> Samples:
        """``loss``: the data's objective (cross-entropy with class labels); ``kl``: the divergence from the
        FP32 predictions whatever the labels (squared error to the FP32 output if it is not ``(N, C)``)."""
        if self.metric == "kl":
            samples = Samples(samples.inputs, None)
        return with_objective(model, samples, per_pass, self.name)

    @staticmethod
    def _loss(model: nn.Module, samples: Samples, per_pass: int, layers: Sequence[str] = (),
              sizes: dict[str, int] | None = None) -> float:
        """Mean objective over the samples (``per_pass`` per forward); ``sizes`` collects each layer's
        input elements over all samples and calls."""
        handles = []
        if sizes is not None:
            for name in layers:
                handles.append(model.get_submodule(name).register_forward_pre_hook(
                    lambda _m, args, name=name: sizes.__setitem__(name, sizes[name] + args[0].numel())))
        try:
            total = 0.0
            for _, part in samples.chunks(per_pass):
                assert part.target is not None
                total += float(objective_loss(model(*part.inputs), part.objective, part.target, 1).double())
            return total / len(samples)
        finally:
            for h in handles:
                h.remove()


def _quantized_output(layer: nn.Module, w_bits: int, act: ActQuant | None) -> Any:
    """A forward hook that replaces the layer's output by the layer run on its fake-quantized input and
    weights (the layer's own ``forward``, so any conv or linear flavour quantizes the same way)."""
    weight_q = fake_quant_weight(layer.weight.detach(), w_bits)
    shift = None  # the rounding's mean output shift, taken back where the layer's bias is corrected
    if getattr(layer, INPUT_MEAN, None) is not None and w_bits < FLOAT_BITS:
        shift = corrected_bias(layer, w_bits) - (0 if layer.bias is None else layer.bias.detach().float())
    busy = [False]

    def hook(mod: nn.Module, args: tuple[Any, ...], _out: Any) -> Any:
        if busy[0]:
            return None
        busy[0] = True
        try:
            x = args[0] if act is None else fake_quant_act(args[0], act)
            out = functional_call(mod, {"weight": weight_q}, (x, *args[1:]))
            if shift is not None:  # per output channel: the last dim of a linear's, dim 1 of a conv's
                out = out + (shift if isinstance(mod, nn.Linear) else shift.view(-1, *(1,) * (out.dim() - 2)))
            return out
        finally:
            busy[0] = False
    return hook


def measure_skipped(result: SensitivityResult, model: nn.Module, ranges: Mapping[str, tuple[float, float]],
                    pairs: Sequence[Bits], batches: Sequence[Batch],
                    estimate: Any = None) -> SensitivityResult:
    """``result`` with each layer its estimator skipped for want of derivatives scored by its measured loss
    change instead (:class:`DeltaLossEstimator` on ``batches``, the same objective), so that no layer the
    model calls counts as free to quantize. The layer keeps its ``skipped`` reason beside the measurement;
    layers ``forward()`` never calls stay at 0 (quantizing them changes nothing).

    Args:
        estimate: ``(estimator, layers) -> SensitivityResult``, e.g. a cached estimate; default: run it.
    """
    todo = [n for n, why in result.skipped().items() if why != NOT_CALLED and result.layers[n].delta_loss is None]
    if not todo:
        return result
    est = DeltaLossEstimator(ranges, pairs, batch_size=result.samples or len(first_samples(batches, None)))
    measured = estimate(est, todo) if estimate is not None else est.estimate(model, todo, batches)
    layers = dict(result.layers)
    for name in todo:
        m = measured.layers[name]
        if m.delta_loss is not None and m.skipped is None:
            layers[name] = dataclasses.replace(layers[name], act_numel=m.act_numel, delta_loss=m.delta_loss)
    return dataclasses.replace(result, layers=layers, seconds=result.seconds + measured.seconds)
