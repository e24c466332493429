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
from torch.nn import functional as F

from mpsearch.candidate import FLOAT_BITS, Bits, Candidate
from mpsearch.errors import ConfigError
from mpsearch.hashing import ContentHasher
from mpsearch.quant.fake import ACT_SCHEME_KEY, ActQuant, fake_quant_act, fake_quant_weight, quantize_
from mpsearch.sensitivity.base import Batch
from mpsearch.sensitivity.loss import W_PREFIX, X_PREFIX, check_layers, first_samples, layer_loss
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
        missing = [n for n in self.layers if n not in ranges]
        if missing:
            raise ConfigError(f"layer {missing[0]!r} has no calibrated activation range; calibrate it first")
        self.model = model
        # ACT_SCHEME_KEY (asymmetric ranges) rides along: the quantizers and the config key depend on it
        self.ranges = {n: (float(ranges[n][0]), float(ranges[n][1])) for n in (*self.layers, ACT_SCHEME_KEY)
                       if n in ranges}
        self.batch_size = int(batch_size)
        self.x, self.y = first_samples(batches, self.batch_size)
        self._context: str | None = None

    def config_key(self) -> dict[str, Any]:
        """The settings that determine the scores (part of the cache key)."""
        return {"batch_size": self.batch_size}

    def context_key(self) -> str:
        if self._context is None:
            head = {"format": _FORMAT, "estimator": self.name, "config": self.config_key(), "layers": self.layers,
                    "ranges": {n: list(r) for n, r in self.ranges.items()}}
            self._context = ContentHasher().add(head).add(self.model.state_dict()).add(self.x).add(self.y).hexdigest()
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
        inputs: dict[str, Tensor] = {}
        handles = [model.get_submodule(n).register_forward_pre_hook(
            lambda _m, args, n=n: inputs.__setitem__(n, args[0].detach().clone())) for n in self.layers]
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                model(self.x)
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()
        self._inputs = inputs

    def config_key(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "first_order": self.first_order}

    def _delta(self, cand: Candidate, point: Mapping[str, Tensor]) -> dict[str, Tensor]:
        delta = {k: torch.zeros_like(v) for k, v in point.items()}
        for name, (w, a) in cand.items():
            if w < FLOAT_BITS:
                weight = point[W_PREFIX + name]
                delta[W_PREFIX + name] = fake_quant_weight(weight, w) - weight
            if a < FLOAT_BITS:
                x = self._inputs[name]
                delta[X_PREFIX + name] = fake_quant_act(x, ActQuant.for_layer(self.ranges, name, a)) - x
        return delta

    def score(self, candidate: Mapping[str, Bits]) -> float:
        cand = self._check(candidate)
        if all(p == (FLOAT_BITS, FLOAT_BITS) for p in cand.values()):
            return 0.0
        was_training = self.model.training
        self.model.eval()
        try:
            with layer_loss(self.model, self.layers, self.x, self.y) as (point, loss):
                delta = self._delta(cand, point)
                g, hd = jvp(grad(loss), (point,), (delta,))
                first = sum(float(torch.dot(g[k].reshape(-1), d.reshape(-1))) for k, d in delta.items())
                second = sum(float(torch.dot(hd[k].reshape(-1), d.reshape(-1))) for k, d in delta.items())
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
        with torch.no_grad():
            self._ref_logp = torch.cat([F.log_softmax(self._work(x), 1) for x in self.x.split(self.chunk)])
        self._ref_loss = float(F.nll_loss(self._ref_logp, self.y).double())

    def config_key(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "metric": self.metric}

    @torch.no_grad()
    def score(self, candidate: Mapping[str, Bits]) -> float:
        cand = self._check(candidate)
        if all(p == (FLOAT_BITS, FLOAT_BITS) for p in cand.values()):
            return 0.0
        model = quantize_(self._work, cand, self.ranges)  # re-quantizes the private copy in place
        logp = torch.cat([F.log_softmax(model(x), 1) for x in self.x.split(self.chunk)])
        if self.metric == "loss":
            return float(F.nll_loss(logp, self.y).double()) - self._ref_loss
        return float(F.kl_div(logp, self._ref_logp, log_target=True, reduction="sum").double()) / len(logp)


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
        key = f"{self.estimator.context_key()}-{cand.key()}"
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
