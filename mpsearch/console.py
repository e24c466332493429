"""What a run shows on the console, and where TVM's own output goes instead.

TVM talks a lot: MetaSchedule's task scheduler logs every round through Python's ``logging`` (the
``tvm`` logger tree), and its C++ runtime writes warnings straight to file descriptor 2 (e.g.
``rewrite_tensorize.cc: Warning: Tensorize failed``), as do the builder processes it starts. Left on the
console, hundreds of such lines bury the progress bars. :class:`RunLog` sends all of it to a log file,
with the Python warnings the libraries raise meanwhile (torch.export's and Optuna's deprecation and
experimental notices), and leaves mpsearch's own output (its log lines, tqdm bars, ``sys.stderr``) on the
console.

The log file of a run lives in its run folder (``tvm.log``). The run folder is made only once the inputs
are known to be usable, so until then the log is written to a pending file in the cache folder and moved
(appended) into the run folder when that exists.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOG_NAME = "tvm.log"
_FORMAT = "%(asctime)s [%(levelname)s] %(name)s: %(message)s"


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    return [h for lg in loggers for h in lg.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def _writes_to_fd2(stream: Any) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


class RunLog:
    """Redirects TVM's output to a log file for as long as it is open (use it as a context manager).

    * The ``tvm`` logger tree gets a file handler and stops propagating to the application's handlers.
    * Python warnings (:func:`warnings.showwarning`) are written to the file, as ``logging.captureWarnings``
      would write them, instead of to ``sys.stderr``.
    * File descriptor 2 is pointed at the file, so C++ ``LOG(WARNING)`` lines and the output of worker
      processes started meanwhile land there; ``sys.stderr`` and the logging handlers and progress bars
      that wrote to descriptor 2 are moved onto a duplicate of the console's descriptor, so mpsearch's
      own output stays visible.

    Everything is restored on exit. Not re-entrant, and it redirects descriptor 2 for the whole process:
    open one per run, in the thread that runs it.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._saved_fd: int | None = None
        self._console: Any = None
        self._old_stderr: Any = None
        self._moved: list[tuple[logging.StreamHandler, Any]] = []
        self._handler: logging.FileHandler | None = None
        self._tvm_state: tuple[bool, int] | None = None
        self._showwarning: Any = None
        #: Bytes of the file that are Python warnings (see :attr:`holds_only_warnings`).
        self.warning_bytes = 0

    def __enter__(self) -> RunLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        self._handler.setFormatter(logging.Formatter(_FORMAT, "%Y-%m-%d %H:%M:%S"))
        tvm_logger = logging.getLogger("tvm")
        self._tvm_state = (tvm_logger.propagate, tvm_logger.level)
        tvm_logger.addHandler(self._handler)
        tvm_logger.propagate = False
        tvm_logger.setLevel(logging.INFO)
        self._showwarning, warnings.showwarning = warnings.showwarning, self._warning_to_log

        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        self._saved_fd = os.dup(2)
        self._point_fd2_at(self.path)
        # What the application writes to descriptor 2 through Python stays on the console.
        self._console = open(os.dup(self._saved_fd), "w", buffering=1, encoding="utf-8",  # noqa: SIM115
                             errors="replace")
        if _writes_to_fd2(sys.stderr):
            self._old_stderr, sys.stderr = sys.stderr, self._console
        for h in _stream_handlers():
            if _writes_to_fd2(h.stream):
                self._moved.append((h, h.setStream(self._console)))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._saved_fd is None:
            return
        with contextlib.suppress(Exception):
            self._console.flush()
        for h, old in reversed(self._moved):
            h.setStream(old)
        self._moved.clear()
        if self._old_stderr is not None:
            sys.stderr, self._old_stderr = self._old_stderr, None
        os.dup2(self._saved_fd, 2)
        os.close(self._saved_fd)
        self._saved_fd = None
        self._console.close()
        tvm_logger = logging.getLogger("tvm")
        tvm_logger.removeHandler(self._handler)
        self._handler.close()
        warnings.showwarning, self._showwarning = self._showwarning, None
        assert self._tvm_state is not None
        tvm_logger.propagate, level = self._tvm_state
        tvm_logger.setLevel(level)

    def _warning_to_log(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
                        file: Any = None, line: str | None = None) -> None:
        text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
        assert self._handler is not None
        before = self._size()
        self._handler.handle(logging.makeLogRecord(
            {"name": "py.warnings", "levelno": logging.WARNING, "levelname": "WARNING", "msg": text}))
        self._handler.flush()
        self.warning_bytes += max(0, self._size() - before)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    @property
    def holds_only_warnings(self) -> bool:
        """Whether the file holds nothing but the Python warnings written to it (or nothing at all): no TVM
        output. A run that stops before its run folder exists drops such a pending log (bad input leaves
        nothing behind); the warnings were about a run that did not happen."""
        if self._handler is not None:
            self._handler.flush()
        return self._size() <= self.warning_bytes

    def move_to(self, path: Path) -> None:
        """Continue the log at ``path`` (appended to what is there: a re-run keeps the earlier runs' log)."""
        path = Path(path)
        if path.resolve() == self.path.resolve():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._handler is not None:
            self._handler.flush()
        with open(self.path, "rb") as src, open(path, "ab") as dst:
            shutil.copyfileobj(src, dst)
        old, self.path = self.path, path
        if self._handler is not None:
            self._handler.acquire()
            try:
                self._handler.close()
                self._handler.baseFilename = os.path.abspath(path)
                self._handler.stream = self._handler._open()
            finally:
                self._handler.release()
        if self._saved_fd is not None:
            self._point_fd2_at(path)
        old.unlink(missing_ok=True)

    @staticmethod
    def _point_fd2_at(path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.dup2(fd, 2)
        finally:
            os.close(fd)


@contextlib.contextmanager
def run_log(path: Path | None) -> Iterator[RunLog | None]:
    """A :class:`RunLog` at ``path``, or nothing at all (``None``: TVM's output stays on the console)."""
    if path is None:
        yield None
        return
    with RunLog(path) as log:
        yield log
