"""Crash-safe files: atomic replacement and an append-only JSON-lines store."""

from __future__ import annotations

import glob
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


#: Seconds after which a temporary file of :func:`atomic_write_bytes` was left by a killed writer (a live
#: writer's exists for milliseconds).
STALE_TMP_S = 60


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    Temporary files of ``path`` older than :data:`STALE_TMP_S`, which a writer killed with
    ``kill -9`` left behind, are removed on the way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
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


def _remove_stale_temps(path: Path) -> None:
    now = time.time()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_S:
                tmp.unlink()
        except OSError:  # another writer removed or renamed it
            pass


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


class JsonLines:
    """Append-only JSON-lines store keyed by each record's ``"key"``.

    Each record is appended with one ``write`` and fsynced; on open, lines a killed writer left
    unfinished, or that are otherwise corrupt (not JSON, not UTF-8, not an object with a ``"key"``,
    or lacking one of ``required``), are dropped (with a warning) and the file is rewritten atomically
    without them, so the values they held are recomputed. :meth:`get` answers a key's latest record;
    :meth:`history` all of them, oldest first (the file keeps every record it was given).
    """

    def __init__(self, path: str | Path, required: tuple[str, ...] = ()) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self._history: dict[str, list[dict[str, Any]]] = {}
        if self.path.exists():
            bad = 0
            data = self.path.read_bytes()
            for line in data.splitlines():
                try:
                    rec = json.loads(line)  # bytes: invalid UTF-8 is a ValueError too
                    if not isinstance(rec, dict) or not isinstance(rec["key"], str) \
                            or any(k not in rec for k in required):
                        raise TypeError("not a record")
                    self.records[rec["key"]] = rec
                    self._history.setdefault(rec["key"], []).append(rec)
                except (ValueError, KeyError, TypeError):
                    bad += 1
            if bad or (data and not data.endswith(b"\n")):
                if bad:
                    log.warning("%s: dropped %d corrupt line(s); they will be recomputed", self.path, bad)
                atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for h in self._history.values() for r in h))

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def history(self, key: str) -> list[dict[str, Any]]:
        """Every record of ``key``, oldest first."""
        return list(self._history.get(key, ()))

    def put(self, rec: dict[str, Any]) -> None:
        self.records[rec["key"]] = rec
        self._history.setdefault(rec["key"], []).append(rec)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())


def repair_journal(path: str | Path) -> int:
    """Make an Optuna journal file readable again after a crash; returns the log lines dropped.

    A journal is a sequence of operations replayed in order, so it is cut at the first line that is
    not a complete JSON object (a killed writer's unfinished last line, or corruption): dropping a
    line in the middle would shift the trial ids every later operation refers to. The trials logged
    before that line are kept; an unfinished trial is then failed by the search and re-run. When a
    line other than the last is lost, the original is kept beside it as ``<name>.corrupt``.
    Only the process that owns the study may call this, before any worker writes to it.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, else an unfinished line
    good = 0
    for line in lines:
        try:
            if not isinstance(json.loads(line), dict):
                break
        except ValueError:
            break
        good += 1
    dropped = len(lines) - good + (1 if tail else 0)
    if not dropped:
        return 0
    if good < len(lines):
        atomic_write_bytes(path.with_name(path.name + ".corrupt"), data)
        log.warning("%s: corrupt at log line %d; kept the %d operation(s) before it (the original is in %s)",
                    path, good + 1, good, path.name + ".corrupt")
    else:
        log.warning("%s: dropped an unfinished last line left by a killed writer", path)
    atomic_write_bytes(path, b"".join(line + b"\n" for line in lines[:good]))
    return dropped
