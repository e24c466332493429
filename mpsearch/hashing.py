"""One content-hash recipe for every cache key (sensitivity, accuracies, learned PTQ, tuning, estimates, runs).

A key is SHA-256 over a canonical byte encoding of what determines the cached result:

* ``bytes``: as they are;
* a tensor (``torch.Tensor`` or ``numpy.ndarray``): ``"<dtype>|<shape>|"`` then its raw bytes, so values,
  shape and dtype all count (two arrays with the same bytes but another shape or dtype differ);
* a mapping or list/tuple that holds tensors: element by element, each preceded by ``"\\n<key>|"``
  (mappings in sorted key order, sequences by index);
* anything else (plain JSON data: numbers, strings, lists, dicts): its JSON text with sorted keys.

Plain JSON data hashes exactly as ``sha256(json.dumps(x, sort_keys=True))`` did before this module
existed, and tensors as the sensitivity cache hashed them, so those keys (the tuning database folder,
kernel timings, the sensitivity cache, run folders) did not change when the callers moved here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ContentHasher", "content_hash", "file_sha256"]


def _is_array(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return True
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def _torch() -> Any:
    import sys

    return sys.modules.get("torch")  # a torch tensor can only exist if torch was imported


def _holds_arrays(x: Any) -> bool:
    if _is_array(x):
        return True
    if isinstance(x, Mapping):
        return any(_holds_arrays(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return any(_holds_arrays(v) for v in x)
    return False


class ContentHasher:
    """Incremental SHA-256 over parts encoded as the module docstring says."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def add(self, part: Any) -> ContentHasher:
        h = self._h
        if isinstance(part, (bytes, bytearray, memoryview)):
            h.update(part)
        elif isinstance(part, np.ndarray):
            a = np.ascontiguousarray(part)
            h.update(f"{a.dtype}|{tuple(a.shape)}|".encode())
            h.update(a.reshape(-1).view(np.uint8).tobytes())
        elif _is_array(part):
            import torch

            t = part.detach().cpu().contiguous()
            h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # bit pattern of any dtype (bf16 too)
        elif isinstance(part, Mapping) and _holds_arrays(part):
            for k in sorted(part, key=str):
                h.update(f"\n{k}|".encode())
                self.add(part[k])
        elif isinstance(part, (list, tuple)) and _holds_arrays(part):
            for i, p in enumerate(part):
                h.update(f"\n{i}|".encode())
                self.add(p)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        return self

    def hexdigest(self, length: int | None = None) -> str:
        d = self._h.hexdigest()
        return d if length is None else d[:length]


def content_hash(*parts: Any, length: int | None = None) -> str:
    """Hex SHA-256 of ``parts`` (each encoded as the module docstring says, ``"\\n"`` between parts),
    cut to ``length`` characters if given."""
    h = ContentHasher()
    for i, p in enumerate(parts):
        if i:
            h.add(b"\n")
        h.add(p)
    return h.hexdigest(length)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks (export manifests record and check these)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
