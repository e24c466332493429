"""Content-keyed disk cache of sensitivity results: one JSON file per (estimator, model, data)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from mpsearch.errors import MPSearchError
from mpsearch.hashing import ContentHasher
from mpsearch.storage import atomic_write_text
from mpsearch.sensitivity.base import Batch, SensitivityEstimator, SensitivityResult
from mpsearch.sensitivity.data import as_inputs

log = logging.getLogger(__name__)

_FORMAT = 1  # bump when the cached JSON or the key recipe changes


def cache_key(
    estimator: SensitivityEstimator, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch]
) -> str:
    """SHA-256 over what determines an estimate: estimator and its config, layers, weights, data."""
    h = ContentHasher()
    h.add({"format": _FORMAT, "estimator": estimator.name, "config": estimator.config_key(), "layers": list(layers)})
    h.add(model.state_dict())
    for i, batch in enumerate(batches):
        h.add(f"\nbatch{i}|".encode())
        for t in _flat(batch):
            h.add(b"no label|" if t is None else t)
    return h.hexdigest()


def _flat(batch: Batch) -> list[Tensor | None]:
    """A batch's tensors in order: the inputs (one or several), then the label (``None`` without)."""
    inputs, label = batch
    return [*as_inputs(inputs), label]


def cached_estimate(
    estimator: SensitivityEstimator,
    model: nn.Module,
    layers: Sequence[str],
    batches: Sequence[Batch],
    cache_dir: Path,
) -> SensitivityResult:
    """Return ``estimator.estimate(model, layers, batches)``, from ``cache_dir/sensitivity`` if there.

    A missing, unreadable or malformed cache file is recomputed and overwritten. The estimator's
    settings that depend on the model and the machine (an automatic sample count) are fixed first
    (:meth:`SensitivityEstimator.resolve`), so the key names the settings the result is computed with.
    """
    layers = list(layers)
    batches = list(batches)
    estimator = estimator.resolve(model, layers, batches)
    path = Path(cache_dir) / "sensitivity" / f"{cache_key(estimator, model, layers, batches)}.json"
    if path.exists():
        try:
            result = SensitivityResult.from_json(path.read_text(encoding="utf-8"))
            if result.estimator != estimator.name or list(result.layers) != layers:
                raise MPSearchError("cached result names other layers or another estimator")
            log.info("sensitivity cache hit: %s", path)
            return result
        except (OSError, UnicodeDecodeError, MPSearchError) as e:
            log.warning("ignoring bad sensitivity cache file %s (%s); recomputing", path, e)
    result = estimator.estimate(model, layers, batches)
    atomic_write_text(path, result.to_json())
    log.info("sensitivity cached: %s", path)
    return result
