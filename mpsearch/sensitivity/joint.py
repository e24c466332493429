"""Candidate-level (joint) proxies: the predicted loss increase of a whole candidate at once.

The per-layer estimators give an *additive* score (the sum over layers), which the exact ILP needs.
Quantizing several layers together is not additive: errors of consecutive layers add up or cancel
in the output, and activation and weight errors of one layer interact. A joint estimator scores the
candidate as a whole, so it sees those interactions:

* ``second_order``: the Taylor expansion ``gᵀΔ + ½ ΔᵀHΔ`` of the calibration loss in the whole
  candidate's perturbation Δ (every layer's ``Q_w(W) − W`` and ``Q_a(X) − X`` together), from one
  forward-over-reverse Hessian-vector product per candidate (``torch.func``), so every cross-layer
  Hessian block is included.
* ``calib_kl``: the measured mean KL divergence of the fake-quantized model's predictions from the
  FP32 model's on calibration images (not the test split); one forward pass per candidate.

Both are deterministic and are cached per candidate by content (:class:`CandidateProxy`): the key
holds the estimator, its settings, the model's weights, the calibrated ranges and the data.
"""

from __future__ import annotations

import copy
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, jvp

from mpsearch.candidate import FLOAT_BITS, Bits, Candidate
from mpsearch.errors import ConfigError
from mpsearch.hashing import ContentHasher
from mpsearch.quant.fake import (
    ACT_SCHEME_KEY,
    ActQuant,
    fake_quant_act,
    fake_quant_weight,
    quantize_,
    weight_grid_tag,
)
from mpsearch.sensitivity.base import Batch
from mpsearch.sensitivity.data import Samples, first_samples, objective_loss, with_objective
from mpsearch.sensitivity.loss import (
    W_PREFIX, X_PREFIX, check_layers, called_layers, derivative_errors, layer_loss, plan_samples, second_order_ops,
)
from mpsearch.storage import JsonLines

log = logging.getLogger(__name__)

_FORMAT = 1  # bump when a joint estimator's arithmetic or key recipe changes


class JointEstimator(ABC):
    """Scores whole candidates: the predicted increase of the loss when all its layers are quantized.

    Contract:
        * Built on a prepared, eval-mode model (BatchNorm folded), its quantizable ``layers``, the
          data (``(inputs, labels)`` batches, the first ``batch_size`` samples used) and the
          calibrated input ranges; the model is not changed, now or later.
        * :meth:`score` of the same candidate gives the same value up to float rounding;
          W32A32 everywhere scores 0. Scores are comparable across candidates, not across models.
        * :meth:`context_key` is a content hash of everything the scores depend on (estimator,
          settings, weights, ranges, data); :class:`CandidateProxy` caches by it and the candidate.
        * Not thread-safe (installs temporary hooks).
    """

    name: str = "abstract"

    def __init__(self, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch],
                 ranges: Mapping[str, tuple[float, float]], batch_size: int) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.layers = check_layers(model, layers)
        self.batch_size = int(batch_size)
        self.samples = first_samples(batches, self.batch_size)
        missing = [n for n in self.layers if n not in ranges]
        if missing:
            missing = [n for n in missing if n in called_layers(model, missing, self.samples.slice(0, 1))]
        if missing:  # a layer forward() never calls has no range and needs none
            raise ConfigError(f"layer {missing[0]!r} has no calibrated activation range; calibrate it first")
        self.model = model
        # ACT_SCHEME_KEY (asymmetric ranges) rides along: the quantizers and the config key depend on it
        self.ranges = {n: (float(ranges[n][0]), float(ranges[n][1])) for n in (*self.layers, ACT_SCHEME_KEY)
                       if n in ranges}
        self._context: str | None = None

    def config_key(self) -> dict[str, Any]:
        """The settings that determine the scores (part of the cache key)."""
        return {"batch_size": self.batch_size}

    def context_key(self) -> str:
        if self._context is None:
            head = {"format": _FORMAT, "estimator": self.name, "config": self.config_key(), "layers": self.layers,
                    "ranges": {n: list(r) for n, r in self.ranges.items()}}
            h = ContentHasher().add(head).add(self.model.state_dict())
            for t in self.samples.tensors():
                h.add(t)
            self._context = h.hexdigest()
        return self._context

    def _check(self, candidate: Mapping[str, Bits]) -> Candidate:
        cand = candidate if isinstance(candidate, Candidate) else Candidate(candidate)
        return cand.validate(self.layers)

    @abstractmethod
    def score(self, candidate: Mapping[str, Bits]) -> float:
        """Predicted loss increase of ``candidate`` (a bit pair for every layer)."""


class SecondOrderEstimator(JointEstimator):
    """``gᵀΔ + ½ ΔᵀHΔ`` of the mean cross-entropy on the batch, Δ the whole candidate's perturbation.

    Δ holds every quantized layer's weight error ``Q_w(W) − W`` and input error ``Q_a(X) − X`` (``X``
    the layer's FP32 input on the batch), added to the inputs through the same hooks as the
    Hutchinson estimator. One ``jvp`` of the gradient gives ``g`` and ``HΔ`` together, with every
    cross-layer and weight-activation Hessian block, at the cost of about three forward passes.
    Unlike the additive score, the sum is not clamped: a negative value (Δ along a descent
    direction) is the expansion's own prediction.

    Args:
        batch_size: Calibration samples used.
        first_order: Include ``gᵀΔ`` (the gradient is not zero at a finite-sample minimum).
    """

    name = "second_order"

    def __init__(self, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch],
                 ranges: Mapping[str, tuple[float, float]], batch_size: int = 128, first_order: bool = True) -> None:
        super().__init__(model, layers, batches, ranges, batch_size)
        self.first_order = bool(first_order)
        was_training = model.training
        inputs: dict[str, list[Tensor]] = {n: [] for n in self.layers}
        handles = []
        try:
            model.eval()
            self._per_pass = plan_samples(self.name, model, self.layers, self.samples, "hvp", len(self.samples),
                                          False).per_pass
            self.samples = with_objective(model, self.samples, self._per_pass, self.name)
            handles = [model.get_submodule(n).register_forward_pre_hook(
                lambda _m, args, n=n: inputs[n].append(args[0].detach().clone())) for n in self.layers]
            with torch.no_grad():
                model(*self.samples.inputs)
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()
        # a layer that runs k times per forward gets its k inputs stacked (LossContext.act_shape)
        self._inputs = {n: xs[0] if len(xs) == 1 else torch.stack(xs) for n, xs in inputs.items() if xs}

    def config_key(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "first_order": self.first_order}

    def _delta(self, cand: Candidate, point: Mapping[str, Tensor], lo: int, hi: int, calls: Mapping[str, int]
               ) -> dict[str, Tensor]:
        delta = {k: torch.zeros_like(v) for k, v in point.items()}
        for name, (w, a) in cand.items():
            if W_PREFIX + name not in point:
                continue  # skipped layer (not called, no gradient)
            if w < FLOAT_BITS:
                weight = point[W_PREFIX + name]
                delta[W_PREFIX + name] = fake_quant_weight(weight, w) - weight
            if a < FLOAT_BITS and X_PREFIX + name in point:
                # per sample, as the perturbation is ((n * k, ...) inputs as (n, k, ...): GPT-2's Conv1D)
                x, shape, n = self._inputs[name], point[X_PREFIX + name].shape, len(self.samples)
                if calls[name] > 1:
                    x = x.reshape(x.shape[0], n, *shape[2:])[:, lo:hi]
                else:
                    x = x.reshape(n, *shape[1:])[lo:hi]
                delta[X_PREFIX + name] = fake_quant_act(x, ActQuant.for_layer(self.ranges, name, a)) - x
        return delta

    def score(self, candidate: Mapping[str, Bits]) -> float:
        cand = self._check(candidate)
        if all(p == (FLOAT_BITS, FLOAT_BITS) for p in cand.values()):
            return 0.0
        was_training = self.model.training
        self.model.eval()
        first = second = 0.0
        n = len(self.samples)
        try:
            with second_order_ops(), derivative_errors(self.name), \
                    layer_loss(self.model, self.layers, self.samples.slice(0, self._per_pass), total=n) as ctx:
                # g and HΔ add up over passes: the weight blocks sum, the input blocks are per sample
                for lo, part in self.samples.chunks(self._per_pass):
                    point = ctx.point(len(part))
                    delta = self._delta(cand, point, lo, lo + len(part), ctx.calls)
                    g, hd = jvp(grad(lambda p, part=part: ctx.loss(p, part)), (point,), (delta,))
                    first += sum(float(torch.dot(g[k].reshape(-1), d.reshape(-1))) for k, d in delta.items())
                    second += sum(float(torch.dot(hd[k].reshape(-1), d.reshape(-1))) for k, d in delta.items())
        finally:
            self.model.train(was_training)
        return (first if self.first_order else 0.0) + 0.5 * second


class CalibKLEstimator(JointEstimator):
    """Measured divergence of the fake-quantized candidate from FP32 on calibration images.

    ``metric="kl"``: mean ``KL(p_fp32 ‖ p_quant)`` of the softmax outputs (no labels needed; it
    measures how far the predictions move, which is what flips top-1 decisions). ``metric="loss"``:
    the increase of the mean cross-entropy. The fake quantization is the kernels' arithmetic
    (:func:`mpsearch.quant.fake.quantize_`), on a private copy of the model.

    Args:
        batch_size: Calibration samples used.
        metric: ``"kl"`` or ``"loss"``.
        chunk: Samples per forward pass.
    """

    name = "calib_kl"
    METRICS = ("kl", "loss")

    def __init__(self, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch],
                 ranges: Mapping[str, tuple[float, float]], batch_size: int = 512, metric: str = "kl",
                 chunk: int = 256) -> None:
        super().__init__(model, layers, batches, ranges, batch_size)
        if metric not in self.METRICS:
            raise ConfigError(f"metric {metric!r} is unknown; use one of {', '.join(self.METRICS)}")
        if chunk < 1:
            raise ConfigError(f"chunk must be >= 1, got {chunk}")
        self.metric = metric
        self.chunk = int(chunk)
        self._work = copy.deepcopy(model).eval()
        # kl: the divergence from the FP32 predictions (squared error to the FP32 output where it is not
        # (N, C) logits); loss: the data's objective (cross-entropy with class labels)
        data = Samples(self.samples.inputs, None) if metric == "kl" else self.samples
        self.samples = with_objective(self._work, data, self.chunk, self.name)
        self._ref_loss = self._mean_loss(self._work)

    def config_key(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "metric": self.metric}

    @torch.no_grad()
    def score(self, candidate: Mapping[str, Bits]) -> float:
        cand = self._check(candidate)
        if all(p == (FLOAT_BITS, FLOAT_BITS) for p in cand.values()):
            return 0.0
        model = quantize_(self._work, cand, self.ranges)  # re-quantizes the private copy in place
        return self._mean_loss(model) - self._ref_loss

    @torch.no_grad()
    def _mean_loss(self, model: nn.Module) -> float:
        total = 0.0
        for _, part in self.samples.chunks(self.chunk):
            assert part.target is not None
            total += float(objective_loss(model(*part.inputs), part.objective, part.target, 1).double())
        return total / len(self.samples)


class CandidateProxy:
    """A joint estimator's score per candidate, cached on disk by content and timed.

    ``cache_dir/joint_proxy.jsonl`` holds one line per (context, candidate); a line a killed run
    left half-written is dropped and recomputed. ``seconds`` is the wall time spent computing
    (not reading) scores, ``computed`` how many were computed.
    """

    def __init__(self, estimator: JointEstimator, cache_dir: Path | None) -> None:
        self.estimator = estimator
        self.name = estimator.name
        self._store = JsonLines(Path(cache_dir) / "joint_proxy.jsonl", required=("value",)) if cache_dir else None
        self._memo: dict[Candidate, float] = {}
        self.seconds = 0.0
        self.computed = 0

    def __call__(self, candidate: Mapping[str, Bits]) -> float:
        cand = candidate if isinstance(candidate, Candidate) else Candidate(candidate)
        if cand in self._memo:
            return self._memo[cand]
        key = f"{self.estimator.context_key()}-{cand.key()}{weight_grid_tag(cand.values())}"
        rec = self._store.get(key) if self._store is not None else None
        if rec is not None:
            value = float(rec["value"])
        else:
            start = time.perf_counter()
            value = self.estimator.score(cand)
            self.seconds += time.perf_counter() - start
            self.computed += 1
            if self._store is not None:
                self._store.put({"key": key, "value": value})
        self._memo[cand] = value
        return value

    def mean_seconds(self) -> float | None:
        """Mean wall time per computed candidate (None when every score came from the cache)."""
        return self.seconds / self.computed if self.computed else None
