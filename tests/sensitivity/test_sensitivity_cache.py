from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
from torch import nn

from mpsearch.sensitivity import (
    HutchinsonEstimator, SensitivityEstimator, SensitivityResult, cache_key, cached_estimate,
)
from mpsearch.sensitivity.base import Batch


class Counting(SensitivityEstimator):
    """Wraps an estimator and counts the estimates it runs."""

    def __init__(self, inner: SensitivityEstimator) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls = 0

    def estimate(self, model: nn.Module, layers: Sequence[str], batches: Sequence[Batch]) -> SensitivityResult:
        self.calls += 1
        return self.inner.estimate(model, layers, batches)

    def config_key(self) -> dict:
        return self.inner.config_key()


def _estimator() -> Counting:
    return Counting(HutchinsonEstimator(max_iters=2, min_iters=2))


def test_second_call_hits(tmp_path, tiny_prepared, tiny_batches):
    gm, layers = tiny_prepared.graph_module, tiny_prepared.layer_names
    est = _estimator()
    first = cached_estimate(est, gm, layers, tiny_batches, tmp_path)
    second = cached_estimate(est, gm, layers, tiny_batches, tmp_path)
    assert est.calls == 1
    assert second == first
    files = list((tmp_path / "sensitivity").iterdir())
    assert [f.name for f in files] == [cache_key(est, gm, layers, tiny_batches) + ".json"]


def test_corrupt_file_is_recomputed(tmp_path, tiny_prepared, tiny_batches, caplog):
    gm, layers = tiny_prepared.graph_module, tiny_prepared.layer_names
    est = _estimator()
    first = cached_estimate(est, gm, layers, tiny_batches, tmp_path)
    path = tmp_path / "sensitivity" / f"{cache_key(est, gm, layers, tiny_batches)}.json"
    good = path.read_text()
    for bad in (good[: len(good) // 2], '{"estimator": "hutchinson"}', "", "\x00\xff"):
        path.write_text(bad)
        with caplog.at_level(logging.WARNING, logger="mpsearch.sensitivity.cache"):
            again = cached_estimate(est, gm, layers, tiny_batches, tmp_path)
        assert "recomputing" in caplog.text
        caplog.clear()
        assert again == SensitivityResult.from_json(path.read_text())
        assert list(again.layers) == list(first.layers)
    path.write_bytes(b"\xff\xfe\x00garbage")
    cached_estimate(est, gm, layers, tiny_batches, tmp_path)
    assert est.calls == 6
    assert [f.name for f in (tmp_path / "sensitivity").iterdir()] == [path.name]  # no temp files left


def test_key_depends_on_content(tiny_prepared, tiny_batches):
    gm, layers = tiny_prepared.graph_module, tiny_prepared.layer_names
    est = _estimator()
    key = cache_key(est, gm, layers, tiny_batches)
    assert cache_key(est, copy.deepcopy(gm), list(layers), [tuple(t.clone() for t in b) for b in tiny_batches]) == key

    other = copy.deepcopy(gm)
    with torch.no_grad():
        other.get_submodule("fc").weight[0, 0] += 1e-3
    assert cache_key(est, other, layers, tiny_batches) != key
    assert cache_key(est, gm, layers[:-1], tiny_batches) != key
    assert cache_key(est, gm, layers, tiny_batches[:1]) != key
    assert cache_key(Counting(HutchinsonEstimator(max_iters=2, min_iters=2, seed=1)), gm, layers, tiny_batches) != key
