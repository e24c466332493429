"""Hutchinson estimator of per-layer Hessian traces (weights and input activations in one HVP)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mpsearch.errors import ConfigError
from mpsearch.sensitivity.base import Batch, SensitivityEstimator, SensitivityResult
from mpsearch.sensitivity.loss import W_PREFIX, X_PREFIX, check_layers, first_samples, layer_loss, layer_sensitivities

log = logging.getLogger(__name__)


class _RunningMean:
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


class HutchinsonEstimator(SensitivityEstimator):
    """Hutchinson trace estimates, ``E[vᵀHv]`` with Rademacher ``v``, from forward-over-reverse HVPs.

    A zero perturbation is added to every layer's input, so each iteration's Hessian-vector
    products w.r.t. (layer weights, input perturbations) yield the weight and the activation
    blocks of all layers together; the probes are split over ``groups + 1`` products per
    iteration to keep cross-block terms out of each estimate.

    Iterates until every running mean's relative standard error is below ``tol`` (after at least
    ``min_iters``), or ``max_iters``.

    Cost: one forward and backward once, then ``groups + 1`` partial backward passes per
    iteration (ResNet-20, 128 images of 28x28, 2 cores: ~2.5 s per iteration), so the defaults
    stop at ``max_iters=8`` (~21 s). Per-probe
    standard deviations of conv weight traces are 1-2x the mean, so ``tol=0.02`` is reached
    only on small models; raise ``max_iters`` for tighter estimates.

    Args:
        max_iters: Most iterations (batched Hessian-vector products).
        min_iters: Fewest iterations before the stopping test.
        tol: Relative standard error at which a layer's estimate counts as converged.
        batch_size: Samples used, the first of the concatenated batches.
        seed: Seed of the Rademacher vectors.
        groups: Tangents the layers' weight probes are spread over (round robin); more lowers
            the variance per iteration and costs more per iteration.
    """

    name = "hutchinson"

    def __init__(
        self,
        max_iters: int = 8,
        min_iters: int = 8,
        tol: float = 0.02,
        batch_size: int = 128,
        seed: int = 0,
        groups: int = 2,
    ) -> None:
        if not 1 <= min_iters <= max_iters:
            raise ConfigError(f"need 1 <= min_iters <= max_iters, got min_iters={min_iters}, max_iters={max_iters}")
        if not tol >= 0:
            raise ConfigError(f"tol must be >= 0, got {tol}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if groups < 1:
            raise ConfigError(f"groups must be >= 1, got {groups}")
        self.max_iters = int(max_iters)
        self.min_iters = int(min_iters)
        self.tol = float(tol)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.groups = int(groups)

    def config_key(self) -> dict[str, Any]:
        return {"max_iters": self.max_iters, "min_iters": self.min_iters, "tol": self.tol,
                "batch_size": self.batch_size, "seed": self.seed, "groups": self.groups}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config_key().items())
        return f"HutchinsonEstimator({args})"

    def estimate(
        self, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch]
    ) -> SensitivityResult:
        start = time.perf_counter()
        layers = check_layers(model, layers)
        x, y = first_samples(batches, self.batch_size)
        was_training = model.training
        model.eval()
        try:
            result = self._estimate(model, layers, x, y)
        finally:
            model.train(was_training)
        seconds = time.perf_counter() - start
        log.info("hutchinson: %d layers, %d samples, %d iterations in %.1f s",
                 len(layers), len(x), result[1], seconds)
        return SensitivityResult(self.name, result[0], result[1], seconds)

    def _estimate(
        self, model: nn.Module, layers: list[str], x: Tensor, y: Tensor
    ) -> tuple[dict[str, LayerSensitivity], int]:
        with layer_loss(model, layers, x, y) as (point, loss):
            # Reverse-over-reverse: one forward and one backward that keeps its graph give the gradient
            # as a function of the point; each row's Hessian-vector product is then one more backward
            # through it, from that row's gradient entries to that row's blocks only, every iteration
            # re-using the first two passes. Measured on ResNet-20, 128 images, 2 cores, 8 iterations
            # of 3 rows: 21 s, against 37 s for torch.func's vmapped forward-over-reverse (which
            # recomputes the primal passes and pays 4.6 s more on its first call), same estimates.
            #
            # Each iteration probes `groups + 1` rows: layer i's weights in row i % groups, all
            # activations in the last row. A block's estimate v_bᵀ(Hv)_b also picks up v_bᵀH_bc v_c for
            # every other block c in its row. Those cross terms dominate the variance (a layer's weights
            # and its input share a term holding the gradient), so splitting rows pays for the extra
            # products; measured on a trained ResNet-20, the per-probe CV of weight traces (median over
            # layers) is 2.1 with one row, 1.5 with groups=2, 1.2 with 4, 0.6 with one row per layer,
            # and activations gain more from their own row.
            keys = list(point)
            at = [point[k].detach().clone().requires_grad_(True) for k in keys]
            gradient = torch.autograd.grad(loss(dict(zip(keys, at))), at, create_graph=True)

            def row_hvp(row: list[int], probe: dict[str, Tensor]) -> dict[str, Tensor]:
                """(Hv)_b for the blocks b of one row, v = the row's probes (zero elsewhere): only the
                row's gradient entries are differentiated, and only w.r.t. the row's blocks."""
                hv = torch.autograd.grad([gradient[i] for i in row], [at[i] for i in row],
                                         grad_outputs=[probe[keys[i]] for i in row], retain_graph=True,
                                         allow_unused=True)
                return {keys[i]: torch.zeros_like(at[i]) if h is None else h for i, h in zip(row, hv)}

            gen = torch.Generator().manual_seed(self.seed)
            stats = {key: _RunningMean() for key in point}
            rows = {W_PREFIX + name: i % self.groups for i, name in enumerate(layers)}
            rows.update({X_PREFIX + name: self.groups for name in layers})
            n_rows = self.groups + 1
            members = [[i for i, k in enumerate(keys) if rows[k] == r] for r in range(n_rows)]
            probes = {key: torch.empty_like(t) for key, t in point.items()}  # refilled in place
            it = 0
            while it < self.max_iters:
                for key in keys:
                    probes[key].random_(0, 2, generator=gen).mul_(2).sub_(1)
                hv = {k: h for row in members for k, h in row_hvp(row, probes).items()}
                for key, probe in probes.items():
                    vhv = torch.dot(probe.reshape(-1), hv[key].reshape(-1))
                    stats[key].add(float(vhv) / probe.numel())
                it += 1
                worst = max(s.rel_stderr() for s in stats.values())
                log.debug("hutchinson iteration %d: worst relative standard error %.3g", it, worst)
                if it >= self.min_iters and worst < self.tol:
                    break
            worst_key = max(stats, key=lambda k: stats[k].rel_stderr())
            if it == self.max_iters and stats[worst_key].rel_stderr() >= self.tol:
                log.info("hutchinson: stopped at max_iters=%d; worst relative standard error %.3g (%s)",
                         it, stats[worst_key].rel_stderr(), worst_key)
            for key, st in stats.items():
                log.debug("hutchinson %s: mean %.4g, relative standard error %.3g", key, st.mean, st.rel_stderr())
        weight = {name: stats[W_PREFIX + name].mean for name in layers}
        act = {name: stats[X_PREFIX + name].mean for name in layers}
        return layer_sensitivities(layers, point, weight, act), it
