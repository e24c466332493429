"""Top Hessian eigenvalue of each layer's weight and input-activation block, by power iteration."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad, jvp, vmap

from mpsearch.errors import ConfigError
from mpsearch.sensitivity.base import Batch, SensitivityEstimator, SensitivityResult
from mpsearch.sensitivity.loss import W_PREFIX, X_PREFIX, check_layers, first_samples, layer_loss, layer_sensitivities

log = logging.getLogger(__name__)


class EigenvalueEstimator(SensitivityEstimator):
    """Largest-magnitude eigenvalue of each diagonal Hessian block (HAWQ-V1's signal).

    Runs power iteration on every block at once: the weights of each layer and the input of each
    layer are separate blocks, each probed by its own tangent (one row of a vmapped
    forward-over-reverse Hessian-vector product, ``chunk`` rows per pass), so cross-block terms
    never mix in. A block stops once its Rayleigh quotient changes by at most ``tol`` (relative)
    between iterations, or after ``max_iters``. As a score coefficient ``λ_max · ‖ΔW‖²`` bounds
    the second-order term from above (it is exact only for a perturbation along the eigenvector).

    Cost: one iteration costs about ``2 · layers`` Hessian-vector products, hence the small default
    batch and iteration budget (ResNet-20, 16 images: ~7 s of CPU time per iteration).

    Args:
        max_iters: Most power iterations per block.
        tol: Relative change of the eigenvalue estimate at which a block counts as converged.
        batch_size: Samples used, the first of the concatenated batches.
        seed: Seed of the start vectors.
        chunk: Blocks per vmapped pass (memory grows with it).
    """

    name = "eigenvalue"

    def __init__(self, max_iters: int = 10, tol: float = 2e-2, batch_size: int = 16, seed: int = 0,
                 chunk: int = 11) -> None:
        if max_iters < 2:
            raise ConfigError(f"max_iters must be >= 2, got {max_iters}")
        if not tol >= 0:
            raise ConfigError(f"tol must be >= 0, got {tol}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if chunk < 1:
            raise ConfigError(f"chunk must be >= 1, got {chunk}")
        self.max_iters = int(max_iters)
        self.tol = float(tol)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.chunk = int(chunk)

    def config_key(self) -> dict[str, Any]:
        # chunk changes only how the work is split, not the result
        return {"max_iters": self.max_iters, "tol": self.tol, "batch_size": self.batch_size, "seed": self.seed}

    def estimate(self, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch]) -> SensitivityResult:
        start = time.perf_counter()
        layers = check_layers(model, layers)
        x, y = first_samples(batches, self.batch_size)
        was_training = model.training
        model.eval()
        try:
            with layer_loss(model, layers, x, y) as (point, loss):
                eig, iters = self._power(point, grad(loss))
                sens = layer_sensitivities(layers, point, {n: eig[W_PREFIX + n] for n in layers},
                                            {n: eig[X_PREFIX + n] for n in layers})
        finally:
            model.train(was_training)
        seconds = time.perf_counter() - start
        log.info("eigenvalue: %d layers, %d samples, %d iterations in %.1f s", len(layers), len(x), iters, seconds)
        return SensitivityResult(self.name, sens, iters, seconds)

    def _power(self, point: dict[str, Tensor], grad_fn: Any) -> tuple[dict[str, float], int]:
        def hvp(tangent: dict[str, Tensor]) -> dict[str, Tensor]:
            return jvp(grad_fn, (point,), (tangent,))[1]

        batched = vmap(hvp)
        gen = torch.Generator().manual_seed(self.seed)
        vecs = {}
        for key, t in point.items():
            v = torch.randn(t.shape, generator=gen, dtype=t.dtype)
            vecs[key] = v / v.norm()
        eig: dict[str, float] = {}
        active = list(point)
        it = 0
        while active and it < self.max_iters:
            it += 1
            still = []
            for lo in range(0, len(active), self.chunk):
                keys = active[lo:lo + self.chunk]
                tangents = {k: torch.zeros((len(keys),) + t.shape, dtype=t.dtype) for k, t in point.items()}
                for row, key in enumerate(keys):
                    tangents[key][row] = vecs[key]
                hv = batched(tangents)
                for row, key in enumerate(keys):
                    w = hv[key][row]
                    new = float(torch.dot(vecs[key].reshape(-1), w.reshape(-1)))
                    norm = float(w.norm())
                    old = eig.get(key)
                    eig[key] = new
                    if norm == 0.0:
                        continue  # the block has no curvature: eigenvalue 0, converged
                    vecs[key] = w / norm
                    if old is None or abs(new - old) > self.tol * abs(new):
                        still.append(key)
            active = still
            log.debug("eigenvalue iteration %d: %d blocks not converged", it, len(active))
        if active:
            log.info("eigenvalue: %d blocks not converged after max_iters=%d (e.g. %s)", len(active), it, active[0])
        return eig, it
