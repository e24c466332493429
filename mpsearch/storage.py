"""Crash-safe files: atomic replacement and an append-only JSON-lines store."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


class JsonLines:
    """Append-only JSON-lines store keyed by each record's ``"key"``.

    Each record is appended with one ``write`` and fsynced; on open, lines a killed writer left
    unfinished are dropped (with a warning) and the file is rewritten atomically without them.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            bad = 0
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    self.records[rec["key"]] = rec
                except (json.JSONDecodeError, KeyError, TypeError):
                    bad += 1
            if bad:
                log.warning("%s: dropped %d corrupt line(s); they will be recomputed", self.path, bad)
                atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records.values()))

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def put(self, rec: dict[str, Any]) -> None:
        self.records[rec["key"]] = rec
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
