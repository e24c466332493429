"""The study journal's lock: held by a live process only, released by the kernel when its holder dies.

Optuna's default journal lock (``JournalFileSymlinkLock``) is a symlink made beside the journal. A
process killed while holding it (``kill -9``, OOM, power loss) leaves the link behind, and Optuna
5.1 can never release one that points at a relative path (``os.stat`` of the link fails, and the
retry loop skips both its grace period and its sleep): the next run spins forever. Its
``except BaseException: release()`` also deletes a lock held by *another* process when Ctrl-C
arrives while waiting.

:class:`FlockJournalLock` locks the journal file itself with ``flock(2)``: the lock lives with the
open file descriptor, so the kernel drops it the moment its holder exits however it exits, nothing
is left on disk, and a live worker (another process on the study) is still waited for. It is used
for every journal a run or a worker opens (:func:`journal_storage`), always by absolute path.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import optuna
from optuna.storages.journal._file import BaseJournalFileLock  # the lock interface (not re-exported)

log = logging.getLogger(__name__)

#: Seconds between warnings while a live process holds the lock.
WARN_EVERY_S = 10.0

try:
    import fcntl
except ImportError:  # Windows: no flock; Optuna's open-file lock, by absolute path
    fcntl = None  # type: ignore[assignment]


class FlockJournalLock(BaseJournalFileLock):
    """An exclusive ``flock`` on the journal file (Optuna's lock interface: ``acquire`` / ``release``).

    ``acquire`` polls a non-blocking lock, so Ctrl-C while waiting is prompt and releases nothing it
    does not hold, and warns every :data:`WARN_EVERY_S` seconds that a live process holds it. After
    locking it checks the path still names the locked file: :func:`mpsearch.storage.repair_journal`
    replaces the file, and a lock on the replaced one guards nothing. Thread-safe: each thread holds
    its own descriptor (flock locks of two descriptors exclude each other even in one process).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(Path(path).absolute())
        self._held = threading.local()

    def acquire(self) -> bool:
        sleep, waited_since, warned = 0.001, time.monotonic(), time.monotonic()
        while True:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)  # NFS wants write access
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                now = time.monotonic()
                if now - warned > WARN_EVERY_S:
                    log.warning("waiting %.0f s for the study journal %s: another live process on the study "
                                "is writing it", now - waited_since, self.path)
                    warned = now
                time.sleep(sleep)
                sleep = min(sleep * 2, 0.05)
                continue
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:  # the path was replaced or removed between open and stat
                same = False
            if same:
                self._held.fd = fd
                return True
            os.close(fd)  # closing drops the lock; try again on the file now at the path

    def release(self) -> None:
        fd = getattr(self._held, "fd", None)
        if fd is None:
            return
        self._held.fd = None
        os.close(fd)  # the last descriptor of the open file closes: the kernel drops the lock


def journal_lock(path: str | Path) -> BaseJournalFileLock:
    """The lock every mpsearch process uses on the journal ``path``."""
    if fcntl is None:
        return optuna.storages.journal.JournalFileOpenLock(str(Path(path).absolute()))
    return FlockJournalLock(path)


def journal_storage(path: str | Path) -> optuna.storages.JournalStorage:
    """An Optuna journal storage on ``path`` (made absolute) under :func:`journal_lock`."""
    path = Path(path).absolute()
    return optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path), lock_obj=journal_lock(path)))


def remove_stale_symlink_lock(path: str | Path) -> bool:
    """Remove ``<journal>.lock``, the symlink lock earlier mpsearch versions (Optuna's default) used.

    No mpsearch process takes that lock any more, so one on disk was left by a killed run of an
    earlier version; Optuna's own loop would wait for it forever. Returns whether one was removed.
    """
    link = Path(str(Path(path).absolute()) + ".lock")
    if not link.is_symlink():
        return False
    link.unlink(missing_ok=True)
    log.warning("%s: removed a journal lock left by a killed run (the study is locked with flock now)", link)
    return True


__all__ = ["FlockJournalLock", "journal_lock", "journal_storage", "remove_stale_symlink_lock"]
