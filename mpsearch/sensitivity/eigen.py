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
from mpsearch.sensitivity.data import Samples, first_samples, with_objective
from mpsearch.sensitivity.loss import (
    W_PREFIX, X_PREFIX, LossContext, check_layers, layer_sensitivities, derivative_errors, layer_loss, planned,
    resolved, second_order_ops,
)

log = logging.getLogger(__name__)


def _part(t: Tensor, lo: int, hi: int, multi: bool) -> Tensor:
    """Samples ``lo:hi`` of an input perturbation (axis 1 behind a call axis)."""
    return t[:, lo:hi] if multi else t[lo:hi]


class EigenvalueEstimator(SensitivityEstimator):
    """Largest-magnitude eigenvalue of each diagonal Hessian block (HAWQ-V1's signal).

    Runs power iteration on every block at once: the weights of each layer and the input of each
    layer are separate blocks, each probed by its own tangent (one row of a vmapped
    forward-over-reverse Hessian-vector product, ``chunk`` rows per pass), so cross-block terms
    never mix in. A block stops once its Rayleigh quotient changes by at most ``tol`` (relative)
    between iterations, or after ``max_iters``. As a score coefficient ``λ_max · ‖ΔW‖²`` bounds
    the second-order term from above (it is exact only for a perturbation along the eigenvector).

    Memory: each product runs over the samples in passes sized to the memory budget (the passes'
    products add up exactly); ``auto_samples`` lowers the sample count as for Hutchinson.

    Cost: one iteration costs about ``2 · layers`` Hessian-vector products, hence the small default
    batch and iteration budget (ResNet-20, 16 images: ~7 s of CPU time per iteration).

    Args:
        max_iters: Most power iterations per block.
        tol: Relative change of the eigenvalue estimate at which a block counts as converged.
        batch_size: Samples used, the first of the concatenated batches.
        seed: Seed of the start vectors.
        chunk: Blocks per vmapped pass (memory grows with it).
        auto_samples: Use fewer samples where a pass of ``batch_size`` would not fit in memory.
    """

    name = "eigenvalue"
    kind = "eigen"

    def __init__(self, max_iters: int = 10, tol: float = 2e-2, batch_size: int = 16, seed: int = 0,
                 chunk: int = 11, auto_samples: bool = True) -> None:
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
        self.auto_samples = bool(auto_samples)

    def config_key(self) -> dict[str, Any]:
        # chunk changes only how the work is split, not the result
        return {"max_iters": self.max_iters, "tol": self.tol, "batch_size": self.batch_size, "seed": self.seed}

    def resolve(self, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch]) -> EigenvalueEstimator:
        return resolved(self, model, layers, batches, rows=self.chunk)

    def estimate(self, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch]) -> SensitivityResult:
        start = time.perf_counter()
        layers = check_layers(model, layers)
        samples = first_samples(batches, self.batch_size)
        was_training = model.training
        model.eval()
        try:
            with second_order_ops(), derivative_errors(self.name):
                p = planned(self, model, layers, samples, rows=self.chunk)
                samples = with_objective(model, samples.slice(0, p.samples), p.per_pass, self.name)
                with layer_loss(model, layers, samples.slice(0, p.per_pass), total=len(samples)) as ctx:
                    eig, iters = self._power(ctx, samples, p.per_pass)
                    sens = layer_sensitivities(ctx, {n: eig[W_PREFIX + n] for n in ctx.live},
                                          {n: eig.get(X_PREFIX + n, 0.0) for n in ctx.live}, len(samples))
        finally:
            model.train(was_training)
        seconds = time.perf_counter() - start
        log.info("eigenvalue: %d layers, %d samples, %d iterations in %.1f s", len(layers), len(samples), iters,
                 seconds)
        return SensitivityResult(self.name, sens, iters, seconds, samples=len(samples))

    def _power(self, ctx: LossContext, samples: Samples, per_pass: int) -> tuple[dict[str, float], int]:
        full = ctx.point(len(samples))
        keys = ctx.keys()
        multi = {k: k.startswith(X_PREFIX) and ctx.calls[k[len(X_PREFIX):]] > 1 for k in keys}
        parts = [(lo, part, ctx.point(len(part))) for lo, part in samples.chunks(per_pass)]

        def batched_hvp(part: Samples, point: dict[str, Tensor]) -> Any:
            grad_fn = grad(lambda p: ctx.loss(p, part))
            return vmap(lambda tangent: jvp(grad_fn, (point,), (tangent,))[1])

        hvps = [batched_hvp(part, point) for _, part, point in parts]
        gen = torch.Generator().manual_seed(self.seed)
        vecs = {}
        for key in keys:
            v = torch.randn(full[key].shape, generator=gen, dtype=full[key].dtype)
            vecs[key] = v / v.norm()
        eig: dict[str, float] = {}
        active = list(keys)
        it = 0
        while active and it < self.max_iters:
            it += 1
            still = []
            for lo_b in range(0, len(active), self.chunk):
                block = active[lo_b:lo_b + self.chunk]
                hv_all = {key: torch.zeros_like(vecs[key]) for key in block}
                for (lo, part, point), hvp in zip(parts, hvps):
                    hi = lo + len(part)
                    tangents = {k: torch.zeros((len(block),) + t.shape, dtype=t.dtype) for k, t in point.items()}
                    for row, key in enumerate(block):
                        tangents[key][row] = vecs[key] if key.startswith(W_PREFIX) else _part(vecs[key], lo, hi, multi[key])
                    hv = hvp(tangents)
                    for row, key in enumerate(block):
                        if key.startswith(W_PREFIX):
                            hv_all[key] += hv[key][row]
                        else:  # the input blocks are block-diagonal over samples
                            _part(hv_all[key], lo, hi, multi[key]).copy_(hv[key][row])
                for key in block:
                    w = hv_all[key]
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
        return eig, max(it, 1)
