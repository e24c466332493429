"""Hutchinson estimator of per-layer Hessian traces (weights and input activations in one HVP); the loss it
differentiates is :mod:`mpsearch.sensitivity.loss`'s."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mpsearch.errors import ConfigError
from mpsearch.sensitivity.base import Batch, LayerSensitivity, SensitivityEstimator, SensitivityResult
from mpsearch.sensitivity.data import Samples, first_samples, with_objective
from mpsearch.sensitivity.loss import (
    NO_SECOND, W_PREFIX, X_PREFIX, LossContext, RunningMean, check_layers, derivative_errors, layer_loss,
    layer_sensitivities, planned, resolved, second_order_ops,
)

log = logging.getLogger(__name__)


def _seed(*parts: int) -> int:
    """A generator seed from integers (CPython's tuple-of-int hash is the same in every process)."""
    return hash(parts) & 0x7FFF_FFFF_FFFF_FFFF


class HutchinsonEstimator(SensitivityEstimator):
    """Hutchinson trace estimates, ``E[vᵀHv]`` with Rademacher ``v``, from reverse-over-reverse HVPs.

    A zero perturbation is added to every layer's input, so each iteration's Hessian-vector
    products w.r.t. (layer weights, input perturbations) yield the weight and the activation
    blocks of all layers together; the probes are split over ``groups + 1`` products per
    iteration to keep cross-block terms out of each estimate.

    Iterates until every running mean's relative standard error is below ``tol`` (after at least
    ``min_iters``), or ``max_iters``.

    Memory: the samples run in passes of at most ``chunk`` (default: what fits in the memory budget,
    :mod:`mpsearch.sensitivity.memory`), each pass keeping its own graph for all its iterations; the
    weight probes of an iteration are the same in every pass and the activation probes are drawn per
    sample, so the passes add up to exactly the one-pass estimate. With ``auto_samples`` a model too
    large for a pass of ``batch_size`` samples gets fewer (a power of two, at least 16); the count is
    logged and is part of the cache key (:meth:`resolve`).

    Cost: one forward and backward per pass, then ``groups + 1`` partial backward passes per
    iteration (ResNet-20, 128 images of 28x28, 2 cores: ~2.5 s per iteration), so the defaults
    stop at ``max_iters=8`` (~21 s). Per-probe
    standard deviations of conv weight traces are 1-2x the mean, so ``tol=0.02`` is reached
    only on small models; raise ``max_iters`` for tighter estimates. With more than one pass every
    pass runs ``max_iters`` iterations and the stopping rule is applied to the sums afterwards.

    Args:
        max_iters: Most iterations (batched Hessian-vector products).
        min_iters: Fewest iterations before the stopping test.
        tol: Relative standard error at which a layer's estimate counts as converged.
        batch_size: Samples used, the first of the concatenated batches (with ``auto_samples``: at most).
        seed: Seed of the Rademacher vectors.
        groups: Tangents the layers' weight probes are spread over (round robin); more lowers
            the variance per iteration and costs more per iteration.
        auto_samples: Use fewer samples where a pass of ``batch_size`` would not fit in memory.
        chunk: Most samples per pass (``None``: from the memory budget); does not change the result.
    """

    name = "hutchinson"
    kind = "hvp"

    def __init__(
        self,
        max_iters: int = 8,
        min_iters: int = 8,
        tol: float = 0.02,
        batch_size: int = 128,
        seed: int = 0,
        groups: int = 2,
        auto_samples: bool = True,
        chunk: int | None = None,
    ) -> None:
        if not 1 <= min_iters <= max_iters:
            raise ConfigError(f"need 1 <= min_iters <= max_iters, got min_iters={min_iters}, max_iters={max_iters}")
        if not tol >= 0:
            raise ConfigError(f"tol must be >= 0, got {tol}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if groups < 1:
            raise ConfigError(f"groups must be >= 1, got {groups}")
        if chunk is not None and chunk < 1:
            raise ConfigError(f"chunk must be >= 1, got {chunk}")
        self.max_iters = int(max_iters)
        self.min_iters = int(min_iters)
        self.tol = float(tol)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.groups = int(groups)
        self.auto_samples = bool(auto_samples)
        self.chunk = None if chunk is None else int(chunk)
        self.max_pass = self.chunk

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
        samples = first_samples(batches, self.batch_size)
        was_training = model.training
        model.eval()
        try:
            with second_order_ops(), derivative_errors(self.name):
                p = planned(self, model, layers, samples)
                samples = with_objective(model, samples.slice(0, p.samples), p.per_pass, self.name)
                sens, it = self._estimate(model, layers, samples, p.per_pass)
        finally:
            model.train(was_training)
        seconds = time.perf_counter() - start
        log.info("hutchinson: %d layers, %d samples, %d iterations in %.1f s",
                 len(layers), len(samples), it, seconds)
        return SensitivityResult(self.name, sens, it, seconds, samples=len(samples))

    def _probes(self, ctx: LossContext, keys: list[str], like: list[Tensor], t: int, lo: int, n: int
                ) -> list[Tensor]:
        """Rademacher probes of iteration ``t`` for the pass starting at sample ``lo``: the weights' from
        one generator per iteration, each sample's activations from its own (so passes add up exactly)."""
        gen = torch.Generator().manual_seed(_seed(self.seed, t, -1))
        out = [torch.empty_like(a) for a in like]
        acts = []
        for key, p in zip(keys, out):
            if key.startswith(W_PREFIX):
                p.random_(0, 2, generator=gen)
            else:
                acts.append((p, ctx.calls[key[len(X_PREFIX):]] > 1))
        for i in range(n if acts else 0):
            g = torch.Generator().manual_seed(_seed(self.seed, t, lo + i))
            for p, multi in acts:
                (p[:, i] if multi else p[i]).random_(0, 2, generator=g)
        for p in out:
            p.mul_(2).sub_(1)
        return out

    def _estimate(
        self, model: nn.Module, layers: list[str], samples: Samples, per_pass: int
    ) -> tuple[dict[str, LayerSensitivity], int]:
        n = len(samples)
        with layer_loss(model, layers, samples.slice(0, per_pass), total=n) as ctx:
            keys = ctx.keys()
            if not keys:
                return layer_sensitivities(ctx, {}, {}, n), 1
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
            rows = {W_PREFIX + name: i % self.groups for i, name in enumerate(ctx.live)}
            rows.update({X_PREFIX + name: self.groups for name in ctx.live})
            members = [m for r in range(self.groups + 1) if (m := [i for i, k in enumerate(keys) if rows[k] == r])]
            numel = [ctx._weights[k[len(W_PREFIX):]].numel() if k.startswith(W_PREFIX) else ctx.act_numel(k[len(X_PREFIX):], n)
                     for k in keys]
            sums = [[0.0] * len(keys) for _ in range(self.max_iters)]  # Σ over passes of v_bᵀ(Hv)_b
            parts = list(samples.chunks(per_pass))
            iters = self.max_iters
            hv: Any = None
            for lo, part in parts:
                point = ctx.point(len(part))
                at = [point[k].detach().clone().requires_grad_(True) for k in keys]
                with torch.enable_grad():
                    gradient = torch.autograd.grad(ctx.loss(dict(zip(keys, at)), part), at, create_graph=True,
                                                   allow_unused=True)
                for k, g in zip(keys, gradient):
                    if k.startswith(W_PREFIX) and (g is None or not g.requires_grad):
                        ctx.skipped.setdefault(k[len(W_PREFIX):], NO_SECOND)
                for t in range(iters):
                    probes = self._probes(ctx, keys, at, t, lo, len(part))
                    for row in members:
                        live = [i for i in row if gradient[i] is not None and gradient[i].requires_grad]
                        if not live:
                            continue
                        hv = torch.autograd.grad([gradient[i] for i in live], [at[i] for i in live],
                                                 grad_outputs=[probes[i] for i in live], retain_graph=True,
                                                 allow_unused=True)
                        for i, h in zip(live, hv):
                            if h is not None:
                                sums[t][i] += float(torch.dot(probes[i].reshape(-1), h.reshape(-1)))
                            elif keys[i].startswith(W_PREFIX):
                                ctx.skipped.setdefault(keys[i][len(W_PREFIX):], NO_SECOND)
                    if len(parts) == 1 and self._stop(sums[:t + 1], numel, keys):
                        iters = t + 1
                        break
                del gradient, at, point, probes, hv  # before the next pass builds its graph
            if len(parts) > 1:
                iters = next((t + 1 for t in range(self.max_iters) if self._stop(sums[:t + 1], numel, keys)),
                             self.max_iters)
            stats = self._stats(sums[:iters], numel, keys)
            worst_key = max(stats, key=lambda k: stats[k].rel_stderr())
            if iters == self.max_iters and stats[worst_key].rel_stderr() >= self.tol:
                log.info("hutchinson: stopped at max_iters=%d; worst relative standard error %.3g (%s)",
                         iters, stats[worst_key].rel_stderr(), worst_key)
            for key, st in stats.items():
                log.debug("hutchinson %s: mean %.4g, relative standard error %.3g", key, st.mean, st.rel_stderr())
            for name in [n for n in ctx.live if n in ctx.skipped]:
                log.info("layer %s skipped: %s", name, ctx.skipped[name])
            ctx.live = [n for n in ctx.live if n not in ctx.skipped]
            weight = {name: stats[W_PREFIX + name].mean for name in ctx.live}
            act = {name: stats[X_PREFIX + name].mean if X_PREFIX + name in stats else 0.0 for name in ctx.live}
            return layer_sensitivities(ctx, weight, act, n), iters

    @staticmethod
    def _stats(sums: list[list[float]], numel: list[int], keys: list[str]) -> dict[str, RunningMean]:
        stats = {key: RunningMean() for key in keys}
        for row in sums:
            for key, value, size in zip(keys, row, numel):
                stats[key].add(value / size)
        return stats

    def _stop(self, sums: list[list[float]], numel: list[int], keys: list[str]) -> bool:
        if len(sums) < self.min_iters:
            return False
        worst = max(s.rel_stderr() for s in self._stats(sums, numel, keys).values())
        log.debug("hutchinson iteration %d: worst relative standard error %.3g", len(sums), worst)
        return worst < self.tol

    def resolve(self, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch]) -> HutchinsonEstimator:
        return resolved(self, model, layers, batches)
