"""Empirical Fisher information per layer: the mean squared per-sample gradient."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torch.func import grad, vmap

from mpsearch.errors import ConfigError
from mpsearch.sensitivity.base import Batch, SensitivityEstimator, SensitivityResult
from mpsearch.sensitivity.loss import W_PREFIX, X_PREFIX, check_layers, first_samples, layer_loss, layer_sensitivities

log = logging.getLogger(__name__)


class FisherEstimator(SensitivityEstimator):
    """Mean diagonal of the empirical Fisher ``mean_n g_n g_nᵀ`` per layer, weights and input activations.

    ``g_n`` is the gradient of sample ``n``'s loss (per-sample gradients by ``vmap``). Near a
    minimum the Fisher approximates the Hessian (Gauss-Newton), so the coefficients are on the
    same scale as Hutchinson's traces and enter the same score, ``0.5 · F · ‖ΔW‖²``. The input
    coefficient is divided by the batch size, as the Hessian of the batch-mean loss is.
    Deterministic; one backward pass per sample, no second derivatives.

    Args:
        batch_size: Samples used, the first of the concatenated batches.
        chunk: Samples per vmapped pass (memory grows with it).
    """

    name = "fisher"

    def __init__(self, batch_size: int = 128, chunk: int = 32) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if chunk < 1:
            raise ConfigError(f"chunk must be >= 1, got {chunk}")
        self.batch_size = int(batch_size)
        self.chunk = int(chunk)

    def config_key(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size}

    def estimate(self, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch]) -> SensitivityResult:
        start = time.perf_counter()
        layers = check_layers(model, layers)
        x, y = first_samples(batches, self.batch_size)
        n = len(x)
        was_training = model.training
        model.eval()
        try:
            with layer_loss(model, layers, x, y, act_batch=1) as (point, loss):
                def sample_grad(xi: Tensor, yi: Tensor) -> dict[str, Tensor]:
                    return grad(lambda p: loss(p, xi[None], yi[None]))(point)

                sums = {key: 0.0 for key in point}
                for lo in range(0, n, self.chunk):
                    g = vmap(sample_grad)(x[lo:lo + self.chunk], y[lo:lo + self.chunk])
                    for key in point:
                        sums[key] += float(g[key].double().pow(2).sum())
                weight = {m: sums[W_PREFIX + m] / (n * point[W_PREFIX + m].numel()) for m in layers}
                act = {m: sums[X_PREFIX + m] / (n * point[X_PREFIX + m].numel()) / n for m in layers}
                sens = layer_sensitivities(layers, point, weight, act, n_samples=n)
        finally:
            model.train(was_training)
        seconds = time.perf_counter() - start
        log.info("fisher: %d layers, %d samples in %.1f s", len(layers), n, seconds)
        return SensitivityResult(self.name, sens, n, seconds)
