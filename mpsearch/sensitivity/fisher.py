"""Empirical Fisher information per layer: the mean squared per-sample gradient."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from mpsearch.errors import ConfigError
from mpsearch.sensitivity.base import Batch, SensitivityEstimator, SensitivityResult
from mpsearch.sensitivity.data import Samples, first_samples, sampled_targets, with_objective
from mpsearch.sensitivity.loss import (
    W_PREFIX, X_PREFIX, check_layers, layer_sensitivities, derivative_errors, layer_loss, planned, resolved,
    second_order_ops,
)

log = logging.getLogger(__name__)


class FisherEstimator(SensitivityEstimator):
    """Mean diagonal of the empirical Fisher ``mean_n g_n g_nᵀ`` per layer, weights and input activations.

    ``g_n`` is the gradient of sample ``n``'s loss (per-sample gradients by ``vmap``). Near a
    minimum the Fisher approximates the Hessian (Gauss-Newton), so the coefficients are on the
    same scale as Hutchinson's traces and enter the same score, ``0.5 · F · ‖ΔW‖²``. The input
    coefficient is divided by the batch size, as the Hessian of the batch-mean loss is.
    Deterministic; one backward pass per sample, no second derivatives. Without class labels the
    targets are drawn from the FP32 model's own predictive distribution (seeded by ``seed``; see
    :mod:`mpsearch.sensitivity.data`), which makes it the true Fisher.

    Args:
        batch_size: Samples used, the first of the concatenated batches.
        chunk: Most samples per vmapped pass (fewer where the memory budget says so).
        auto_samples: Use fewer samples where a pass of ``batch_size`` would not fit in memory.
        seed: Seed of the drawn targets (label-free data only).
    """

    name = "fisher"
    kind = "fisher"

    def __init__(self, batch_size: int = 128, chunk: int = 32, auto_samples: bool = True, seed: int = 0) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if chunk < 1:
            raise ConfigError(f"chunk must be >= 1, got {chunk}")
        self.batch_size = int(batch_size)
        self.chunk = int(chunk)
        self.max_pass = self.chunk
        self.auto_samples = bool(auto_samples)
        self.seed = int(seed)

    def config_key(self) -> dict[str, Any]:
        key: dict[str, Any] = {"batch_size": self.batch_size}
        if self.seed:  # keeps the cache keys of earlier results
            key["seed"] = self.seed
        return key

    def resolve(self, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch]) -> FisherEstimator:
        return resolved(self, model, layers, batches)

    def estimate(self, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch]) -> SensitivityResult:
        start = time.perf_counter()
        layers = check_layers(model, layers)
        samples = first_samples(batches, self.batch_size)
        was_training = model.training
        model.eval()
        try:
            with second_order_ops(), derivative_errors(self.name):
                p = planned(self, model, layers, samples)
                samples = with_objective(model, samples.slice(0, p.samples), p.per_pass, self.name)
                samples = sampled_targets(samples, self.seed)
                n = len(samples)
                with layer_loss(model, layers, samples.slice(0, p.per_pass), total=1) as ctx:
                    point = ctx.point(1)
                    objective = samples.objective

                    def sample_grad(inputs: tuple[Tensor, ...], target: Tensor) -> dict[str, Tensor]:
                        one = Samples(tuple(t[None] for t in inputs), None, objective, target[None])
                        return grad(lambda q: ctx.loss(q, one))(point)

                    def looped(part: Samples) -> dict[str, Tensor]:
                        """The same per-sample gradients one sample at a time, by plain autograd."""
                        keys = list(point)
                        out: dict[str, list[Tensor]] = {k: [] for k in keys}
                        for i in range(len(part)):
                            at = [point[k].detach().clone().requires_grad_(True) for k in keys]
                            with torch.enable_grad():
                                gs = torch.autograd.grad(ctx.loss(dict(zip(keys, at)), part.slice(i, i + 1)), at,
                                                         allow_unused=True)
                            for k, a, g in zip(keys, at, gs):
                                out[k].append(torch.zeros_like(a) if g is None else g)
                        return {k: torch.stack(v) for k, v in out.items()}

                    sums = {key: 0.0 for key in point}
                    use_vmap = True
                    for _, part in samples.chunks(p.per_pass):
                        if use_vmap:
                            try:
                                g = vmap(sample_grad)(part.inputs, part.target)
                            except RuntimeError as e:  # data-dependent control flow (e.g. attention masks)
                                if "vmap" not in str(e):
                                    raise
                                log.info("fisher: the model cannot run under vmap (%s); per-sample gradients "
                                         "one sample at a time", str(e).strip().splitlines()[0][:120])
                                use_vmap = False
                        if not use_vmap:
                            g = looped(part)
                        for key in point:
                            sums[key] += float(g[key].double().pow(2).sum())
                    weight = {m: sums[W_PREFIX + m] / (n * point[W_PREFIX + m].numel()) for m in ctx.live}
                    act = {m: sums[X_PREFIX + m] / (n * point[X_PREFIX + m].numel()) / n if X_PREFIX + m in point else 0.0
                           for m in ctx.live}
                    sens = layer_sensitivities(ctx, weight, act, n)
        finally:
            model.train(was_training)
        seconds = time.perf_counter() - start
        log.info("fisher: %d layers, %d samples in %.1f s", len(layers), n, seconds)
        return SensitivityResult(self.name, sens, n, seconds, samples=n)
