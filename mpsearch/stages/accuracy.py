"""Top-1 accuracy of simulated candidates and its cache, shared by proxy validation, evaluation and
learned quantization (one key recipe, so no candidate is evaluated twice on the same data)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from mpsearch.candidate import Candidate
from mpsearch.hashing import content_hash
from mpsearch.quant.fake import quantize_, weight_grid_tag
from mpsearch.quant.prepare import PreparedModel, call_model
from mpsearch.scoring import top1_hits
from mpsearch.storage import JsonLines


def accuracy_context(prepared: PreparedModel, ranges: Mapping[str, tuple[float, float]],
                     data: list[tuple[torch.Tensor, torch.Tensor]]) -> str:
    """The :class:`AccuracyCache` key of a model, its calibration and ALL of ``data`` (every batch's
    values, shapes and dtypes, labels included): two test subsets never share accuracies."""
    return content_hash("accuracy/2", prepared.graph_module.state_dict(), dict(ranges), data, length=16)


class AccuracyCache:
    """Top-1 accuracy of simulated candidates, keyed by model, calibration, data and candidate."""

    def __init__(self, path: Path, context_key: str) -> None:
        self.store = JsonLines(path, required=("accuracy",))
        self.context = context_key

    def get(self, cand: Candidate) -> float | None:
        rec = self.store.get(self._key(cand))
        return None if rec is None else rec["accuracy"]

    def put(self, cand: Candidate, acc: float) -> None:
        self.store.put({"key": self._key(cand), "accuracy": acc})

    def _key(self, cand: Candidate) -> str:
        return f"{self.context}-{cand.key()}{weight_grid_tag(cand.values())}"


@torch.no_grad()
def evaluate_accuracy(prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]],
                      data: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy of the fake-quantized model (the same arithmetic the TVM kernels run): over the
    samples, or over every position of a ``(B, T, V)`` output (:mod:`mpsearch.scoring`)."""
    model = quantize_(prepared.copy_module(), candidate, ranges).eval()
    correct = total = 0
    for x, y in data:
        hits, n = top1_hits(call_model(model, x), y)
        correct += hits
        total += n
    return correct / total


def cached_accuracy(prepared: PreparedModel, ranges: Mapping[str, tuple[float, float]],
                    data: list[tuple[torch.Tensor, torch.Tensor]], cache_dir: Path) -> Callable[[Candidate], float]:
    """:func:`evaluate_accuracy` on ``data`` through the run's :class:`AccuracyCache` (same key as the evaluation)."""
    cache = AccuracyCache(Path(cache_dir) / "accuracy.jsonl", accuracy_context(prepared, ranges, data))

    def accuracy(cand: Candidate) -> float:
        acc = cache.get(cand)
        if acc is None:
            acc = evaluate_accuracy(prepared, cand, ranges, data)
            cache.put(cand, acc)
        return acc

    return accuracy
