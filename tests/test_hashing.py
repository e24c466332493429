"""One content hash for every cache: what it covers, and the keys that must not move."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from mpsearch.hashing import ContentHasher, content_hash
from mpsearch.sensitivity import HutchinsonEstimator, cache_key


def test_plain_data_hashes_as_its_sorted_json() -> None:
    """The recipe the tuning-database folder, kernel timings and run folders were keyed by before."""
    for value in ({"b": 1, "a": [1.5, "x"]}, ["llvm -mcpu=x", "0.27", 2, {"number": 20}], "text", 3):
        assert content_hash(value) == hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
    assert content_hash(b"raw") == hashlib.sha256(b"raw").hexdigest()
    assert content_hash({"a": 1}, length=8) == content_hash({"a": 1})[:8]


def test_tensors_count_values_shape_and_dtype() -> None:
    t = torch.arange(6, dtype=torch.float32)
    key = content_hash(t)
    assert content_hash(t.clone()) == key and content_hash(t.numpy()) == content_hash(t.numpy().copy())
    assert content_hash(t.numpy()[::2]) == content_hash(np.ascontiguousarray(t.numpy()[::2]))  # strides do not count
    assert content_hash(t.reshape(2, 3)) != key  # same bytes, another shape
    assert content_hash(t.view(torch.int32)) != key  # same bytes, another dtype
    other = t.clone()
    other[-1] += 1
    assert content_hash(other) != key
    assert content_hash(t.to(torch.bfloat16)) != content_hash(t.to(torch.float16))  # any dtype hashes
    # nested data: every element counts, not only the first
    a = [(torch.zeros(2), torch.tensor([0])), (torch.ones(2), torch.tensor([1]))]
    b = [(torch.zeros(2), torch.tensor([0])), (torch.ones(2), torch.tensor([2]))]
    assert content_hash(a) != content_hash(b) and content_hash(a) == content_hash([tuple(x) for x in a])
    assert content_hash({"w": np.zeros(3)}) != content_hash({"w": np.zeros(4)})
    assert content_hash(1, 2) != content_hash(12) and content_hash(1, 2) != content_hash(2, 1)


def _sensitivity_key_before(estimator, model, layers, batches) -> str:
    """tests/sensitivity cache key as mpsearch/sensitivity/cache.py computed it before mpsearch/hashing.py."""
    def update(h, t):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())

    h = hashlib.sha256()
    head = {"format": 1, "estimator": estimator.name, "config": estimator.config_key(), "layers": list(layers)}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    state = model.state_dict()
    for name in sorted(state):
        h.update(f"\n{name}|".encode())
        update(h, state[name])
    for i, batch in enumerate(batches):
        h.update(f"\nbatch{i}|".encode())
        for t in batch:
            update(h, t)
    return h.hexdigest()


def test_sensitivity_cache_keys_did_not_move(tiny_prepared, tiny_batches) -> None:
    """Moving the sensitivity cache onto the shared helper keeps its files valid."""
    est = HutchinsonEstimator(max_iters=2, min_iters=2)
    gm, layers = tiny_prepared.graph_module, tiny_prepared.layer_names
    assert cache_key(est, gm, layers, tiny_batches) == _sensitivity_key_before(est, gm, layers, tiny_batches)


def test_incremental_equals_one_shot() -> None:
    parts = [{"a": 1}, torch.ones(3), b"\n"]
    h = ContentHasher()
    for p in parts:
        h.add(p)
    assert h.hexdigest() == hashlib.sha256(
        json.dumps({"a": 1}).encode() + b"torch.float32|(3,)|" + torch.ones(3).numpy().tobytes() + b"\n").hexdigest()
