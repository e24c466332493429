"""The size of this process's TVM thread pool (imports TVM lazily)."""

from __future__ import annotations

import logging
import os

from mpsearch.hardware.fpenv import denormals_flushed

log = logging.getLogger(__name__)
#: TVM's thread-pool affinity mode "big cores" (its default when the pool starts).
_AFFINITY_BIG = 1


def use_threads(threads: int) -> None:
    """Resize this process's TVM thread pool to ``threads``.

    TVM reads ``TVM_NUM_THREADS`` once, when its pool first starts, and a started pool can shrink
    but never grow. A Hydra sweep runs its jobs in one process, so a second profile with another
    thread count would be timed with the first one's threads: the pool is started with every core
    here, then configured down to ``threads``.
    """
    import tvm

    os.environ["TVM_NUM_THREADS"] = str(max(threads, os.cpu_count() or 1))
    with denormals_flushed():  # the pool's threads keep the flush they start with (fpenv.py)
        tvm.runtime.num_threads()  # starts the pool, with every core, unless something started it before
        tvm.get_global_func("runtime.config_threadpool")(_AFFINITY_BIG, threads)
    os.environ["TVM_NUM_THREADS"] = str(threads)  # what subprocesses (MetaSchedule's runners) inherit
    actual = tvm.runtime.num_threads()
    if actual != threads:
        log.warning("TVM's thread pool runs %d thread(s), not %d: it was started with fewer threads earlier "
                    "in this process; measure this profile in a process of its own", actual, threads)


__all__ = ["use_threads"]
