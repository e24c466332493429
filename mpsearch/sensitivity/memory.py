"""How many samples an estimator uses, and how many it runs at once, from the model's memory footprint.

One forward pass with gradients on a sample or two measures what a sample costs: the bytes autograd
saves for the backward pass (activations) and the bytes of the quantizable layers' inputs (the
estimators perturb those). Each estimator turns that into a peak per sample and a fixed part (its
own multiples, see :meth:`Footprint.peak`), and :func:`plan` fits the samples into a fraction
(:data:`MEMORY_FRACTION`) of the memory available now:

* the *sample count* is the requested one, or, where not even a pass of it fits, the largest power of
  two that does, but never below :data:`MIN_SAMPLES` (fewer samples cost accuracy of the estimate
  more than time saves) — the count determines the result, so it is part of the cache key;
* the *samples per pass* (chunk) is what fits; the estimators add the passes up exactly, so it
  changes only the peak memory and the wall time, not the result.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mpsearch.sensitivity.data import Samples, output_tensor

log = logging.getLogger(__name__)

#: Fraction of the available memory an estimator plans to use at its peak.
MEMORY_FRACTION = 0.5
#: Fewest samples an automatic sample count goes down to (memory is then bounded by chunking).
MIN_SAMPLES = 16

# Peak bytes per sample, as multiples of (saved activations S, layer inputs A, weights), and the fixed part
# as a multiple of the weights, per estimator kind. Reverse-over-reverse (hvp) keeps the forward's saved
# tensors, the backward's graph and four layer-input-sized tensors (zero perturbation, its leaf, probe,
# product); forward-over-reverse under vmap (eigen) about as much again per vmapped row; per-sample
# gradients (fisher) one graph and one weight-sized gradient per sample; a no-grad forward at most
# what a backward keeps. Checked against the peak RSS of a 9-layer depthwise CNN at 224x224 (S 3.7 MiB,
# A 2.1 MiB per sample), above the process's peak before the estimate: Hutchinson with a 512 MiB
# budget, automatic count (16 samples, one pass) 409 MiB, 64 samples in 4 passes of 17 490 MiB (one
# pass of 21 took 547 MiB with 4·S + 4·A, hence 5·S + 5·A: passes leave the allocator fragmented);
# fisher 16 samples 301 MiB measured, 320 predicted; eigen 4 rows x 8 samples 816 measured, 894 predicted.
_PER_SAMPLE = {"hvp": (5.0, 5.0, 0.0), "eigen": (5.0, 4.5, 0.0), "fisher": (4.0, 2.5, 2.0),
               "forward": (1.0, 1.0, 0.0)}
_FIXED_WEIGHTS = {"hvp": 6.0, "eigen": 6.0, "fisher": 2.0, "forward": 1.0}


def available_bytes() -> int:
    """Memory available to this process now (psutil's ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


@dataclass(frozen=True)
class Footprint:
    """Bytes one sample costs in a forward pass with gradients.

    Attributes:
        saved: Bytes autograd saves for backward per sample (weights not counted).
        layer_inputs: Bytes of the quantizable layers' inputs per sample.
        weights: Bytes of the model's parameters.
    """

    saved: int
    layer_inputs: int
    weights: int

    def peak(self, kind: str, rows: int = 1) -> tuple[int, int]:
        """``(bytes per sample, fixed bytes)`` of an estimator of ``kind`` (``hvp``, ``eigen``, ``fisher``,
        ``forward``) running ``rows`` vmapped products at once."""
        s, a, w = _PER_SAMPLE[kind]
        per = rows * (s * self.saved + a * self.layer_inputs + w * self.weights)
        return int(per) + 1, int(_FIXED_WEIGHTS[kind] * self.weights * max(rows, 1))


def _storage_key(t: Tensor) -> tuple[int, int]:
    """Identity of the bytes a tensor shows (a view of a larger batch counts only its own part)."""
    try:
        return t.data_ptr(), t.numel() * t.element_size()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
        return id(t), t.numel() * t.element_size()


def measure_footprint(model: nn.Module, layers: Sequence[str], samples: Samples) -> Footprint:
    """One forward pass with gradients on the first sample or two, counting what it saves."""
    part = samples.slice(0, min(2, len(samples)))
    n = len(part)
    params = {k: v.detach().requires_grad_(True) for k, v in model.named_parameters(remove_duplicate=False)}
    weight_keys = {_storage_key(v) for v in params.values()}
    seen: dict[tuple[int, int], int] = {}
    layer_bytes = [0]

    def pack(t: Tensor) -> Tensor:
        key = _storage_key(t)
        if key not in weight_keys:
            seen[key] = key[1]
        return t

    def pre_hook(_mod: nn.Module, args: tuple[Tensor, ...]) -> None:
        if args and isinstance(args[0], Tensor):
            layer_bytes[0] += args[0].numel() * args[0].element_size()

    handles = [model.get_submodule(name).register_forward_pre_hook(pre_hook) for name in layers]
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = output_tensor(functional_call(model, params, part.inputs, tie_weights=False))
        del out
    finally:
        for h in handles:
            h.remove()
    weights = sum(v.numel() * v.element_size() for v in dict(model.named_parameters()).values())
    return Footprint(saved=sum(seen.values()) // n, layer_inputs=layer_bytes[0] // n, weights=weights)


@dataclass(frozen=True)
class Plan:
    """Samples an estimator uses and runs per pass, and why (logged)."""

    samples: int
    per_pass: int
    per_sample_bytes: int
    budget_bytes: int

    def describe(self, name: str, available: int) -> str:
        passes = -(-self.samples // self.per_pass)
        return (f"{name}: ~{self.per_sample_bytes / 2**20:.1f} MiB per sample at peak, budget "
                f"{self.budget_bytes / 2**30:.2f} GiB ({MEMORY_FRACTION:.0%} of {available / 2**30:.2f} GiB "
                f"available): {self.samples} samples in {passes} pass{'es' if passes > 1 else ''} of "
                f"at most {self.per_pass}")


def plan(name: str, footprint: Footprint, kind: str, requested: int, have: int, auto: bool,
         rows: int = 1, available: int | None = None) -> Plan:
    """Sample count and samples per pass of estimator ``name`` (see the module docstring).

    Args:
        requested: Samples asked for (``batch_size``); with ``auto`` the most used.
        have: Samples the data holds.
        auto: Lower the count where a pass of ``requested`` samples would not fit.
        rows: Products one pass runs at once (vmapped tangents).
        available: Available bytes (default: measured now).
    """
    available = available_bytes() if available is None else int(available)
    budget = int(MEMORY_FRACTION * available)
    per_sample, fixed = footprint.peak(kind, rows)
    fit = max(1, (budget - fixed) // per_sample)
    count = min(requested, have)
    if auto and fit < count:
        pow2 = 1 << (int(fit).bit_length() - 1)
        count = min(count, max(pow2, MIN_SAMPLES))
    out = Plan(samples=count, per_pass=int(min(count, fit)), per_sample_bytes=per_sample, budget_bytes=budget)
    log.info("%s", out.describe(name, available))
    if fixed + per_sample > budget:
        log.warning("%s: one sample needs ~%.1f GiB, over the %.1f GiB budget; running one at a time anyway",
                    name, (fixed + per_sample) / 2**30, budget / 2**30)
    return out
