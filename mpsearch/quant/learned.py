"""The seam shared by learning-based quantization: a :class:`Learner` returns a :class:`LearnedModel`.

A learned model is a patch to the prepared (BN-folded) model: new float weights and biases for some
layers and, with LSQ, new activation ranges. Every weight of a layer quantized below 32 bits lies
exactly on the kernels' grid (``scale · codes`` with the kernels' ``scale``: ``max|w| / qmax``, at 2 bits a
clipped step; with learned LSQ weight steps, ``scale`` is the step and every channel keeps a ``±qmax``
code, so the same holds), so the unchanged
:func:`mpsearch.quant.fake.quantize_` and the TVM lowering derive exactly the learned codes from it:
deployment is exact and latency does not change (same kernels, same shapes, only array values).
"""

from __future__ import annotations

import copy
import io
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from mpsearch.candidate import Candidate, is_integer_bits
from mpsearch.errors import MPSearchError
from mpsearch.hashing import content_hash
from mpsearch.quant.fake import quantize_weight, weight_grid_tag
from mpsearch.quant.prepare import PreparedModel
from mpsearch.storage import atomic_write_bytes

log = logging.getLogger(__name__)

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LearnedModel:
    """What a learner produced for one candidate.

    Attributes:
        method: The learner's name (``"adaround"``, ``"brecq"``, ``"qat_kd"``).
        candidate_key: :meth:`Candidate.key` of the candidate it was learned for.
        params: Changed state-dict entries of the prepared graph module (e.g. ``"layer1.0.conv1.weight"``).
        ranges: Activation ranges to quantize with (the calibrated ones, or LSQ's).
        stats: Plain-JSON facts: wall time, per-unit reconstruction MSE before/after, flipped roundings.
    """

    method: str
    candidate_key: str
    params: dict[str, torch.Tensor]
    ranges: dict[str, tuple[float, float]]
    stats: dict[str, Any] = field(default_factory=dict)

    def apply(self, prepared: PreparedModel) -> PreparedModel:
        """A copy of ``prepared`` with the learned parameters loaded (``prepared`` is not changed)."""
        gm = prepared.copy_module()
        state = gm.state_dict()
        unknown = sorted(set(self.params) - set(state))
        if unknown:
            raise MPSearchError(f"learned parameter {unknown[0]!r} is not in the model; it was learned for "
                                "another model")
        with torch.no_grad():
            for name, value in self.params.items():
                state[name].copy_(value)
        return replace(prepared, graph_module=gm, layers=list(prepared.layers),
                       float_layers=dict(prepared.float_layers))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save({"method": self.method, "candidate_key": self.candidate_key, "params": self.params,
                    "ranges": {k: list(v) for k, v in self.ranges.items()}, "stats": json.dumps(self.stats)}, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LearnedModel:
        d = torch.load(io.BytesIO(data), weights_only=True)
        return cls(d["method"], d["candidate_key"], d["params"], {k: (float(v[0]), float(v[1]))
                                                                 for k, v in d["ranges"].items()},
                   json.loads(d["stats"]))


def off_grid_layers(prepared: PreparedModel, learned: LearnedModel, candidate: Candidate) -> list[str]:
    """Quantized layers whose learned weight is not ``scale · codes`` on the kernels' grid (should be none)."""
    gm = learned.apply(prepared).graph_module
    bad = []
    for name, (w_bits, _) in candidate.items():
        if not is_integer_bits(w_bits):  # fp32 / fp16 weights have no grid to learn
            continue
        w = gm.get_submodule(name).weight.detach()
        codes, scale = quantize_weight(w, w_bits)
        # Exact up to the float32 rounding of the recomputed scale (max|w'| / qmax may differ by an ulp).
        if not torch.allclose(codes.float() * scale.view((-1,) + (1,) * (w.dim() - 1)), w, rtol=1e-6, atol=0):
            bad.append(name)
    return bad


class Learner(ABC):
    """Learns a candidate's weights (and optionally activation steps) on calibration data.

    Contract: :meth:`learn` does not change ``prepared``; it is deterministic for fixed settings
    (it seeds its own generator); layers quantized below 32 bits come back snapped onto the
    kernels' grid (:func:`off_grid_layers` is empty); :meth:`settings` is plain JSON and, with the
    model, ranges, data and candidate, determines the result (it keys the cache). Not thread-safe:
    it trains with torch's global thread pool.
    """

    name: str

    @abstractmethod
    def learn(self, prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]],
              batches: Batches) -> LearnedModel:
        """Return the learned patch for ``candidate``."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Everything besides the inputs that determines the result."""

    def describe(self) -> str:
        """The method's name with its options, as the report shows it (e.g. ``brecq (Fisher, LSQ weight)``)."""
        return self.name + (" (LSQ act)" if self.settings().get("lsq") else "")


def learn_key(learner: Learner, prepared: PreparedModel, candidate: Candidate,
              ranges: Mapping[str, tuple[float, float]], batches: Batches) -> str:
    """Content key of a learned result: learner settings, model weights, ranges, data, candidate."""
    return content_hash(learner.name, learner.settings(), prepared.graph_module.state_dict(), dict(ranges),
                        [x for x, _ in batches], [y for _, y in batches],
                        candidate.key() + weight_grid_tag(candidate.values()), length=20)


def cached_learn(learner: Learner, prepared: PreparedModel, candidate: Candidate,
                 ranges: Mapping[str, tuple[float, float]], batches: Batches,
                 cache_dir: str | Path | None) -> tuple[LearnedModel, str]:
    """:meth:`Learner.learn` through a content-keyed file cache (``<cache_dir>/learned/<key>.pt``)."""
    key = learn_key(learner, prepared, candidate, ranges, batches)
    path = None if cache_dir is None else Path(cache_dir) / "learned" / f"{key}.pt"
    if path is not None and path.is_file():
        try:
            result = LearnedModel.from_bytes(path.read_bytes())
            log.info("%s for %s: cached (%s)", learner.name, candidate.describe(), path.name)
            return result, key
        except Exception as e:  # a truncated or foreign file: recompute and overwrite it
            log.warning("%s: unreadable (%s); recomputing", path, e)
    result = learner.learn(prepared, candidate, ranges, batches)
    if path is not None:
        atomic_write_bytes(path, result.to_bytes())
    return result, key


def merge(prepared: PreparedModel, chain: Sequence[LearnedModel]) -> LearnedModel:
    """One patch equivalent to applying ``chain`` in order to ``prepared`` (later entries win)."""
    params: dict[str, torch.Tensor] = {}
    for learned in chain:
        params.update(learned.params)
    return LearnedModel("+".join(c.method for c in chain), chain[-1].candidate_key, params, dict(chain[-1].ranges),
                        {c.method: c.stats for c in chain})


def clone_layer(layer: torch.nn.Module, weight: torch.Tensor) -> torch.nn.Module:
    """A copy of ``layer`` with ``weight`` in place of its weight."""
    out = copy.deepcopy(layer)
    with torch.no_grad():
        out.weight.copy_(weight)
    return out


__all__ = ["Batches", "Learner", "LearnedModel", "cached_learn", "clone_layer", "learn_key", "merge",
           "off_grid_layers"]
