"""The ``stage: <name>`` console lines, the wall time per stage and the stage a Ctrl-C stopped."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

from mpsearch import interrupt
from mpsearch.errors import Interrupted

# The run's console lines keep the logger name they always had: users filter on it, and the chaos and
# CLI drivers of tests/reliability read the ``stage:`` lines.
log = logging.getLogger("mpsearch.pipeline")


class StageTimer:
    """Names each stage on the console, adds its wall time to :attr:`timings` and turns a Ctrl-C inside
    it into :class:`Interrupted` naming the stage (the CLI's one line)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        log.info("stage: %s", name)
        start = time.perf_counter()
        try:
            yield
            interrupt.check()  # a Ctrl-C that native code swallowed stops the run here at the latest
        except KeyboardInterrupt as e:  # Ctrl-C: name the stage for the CLI's one line
            if isinstance(e, Interrupted):
                raise
            raise Interrupted(name) from e
        except Exception as e:  # a Ctrl-C that TVM turned into its own error on the way out of C++
            if interrupt.requested():
                raise Interrupted(name) from e
            raise
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)
