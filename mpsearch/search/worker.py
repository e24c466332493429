"""``mpsearch-worker SPEC``: one more search process on a run's study, on this or another machine.

A run with ``search.workers=N`` starts N-1 of these itself. To add machines, copy the run's
``search_spec.json`` (the problem tables and settings, including an RDB storage URL) and run
``mpsearch-worker search_spec.json --worker-id K`` with a distinct K on each; every worker stops when
the study holds ``search.n_trials`` finished trials. The search itself needs no TVM: the cost table
is in the spec.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from mpsearch.errors import MPSearchError
from mpsearch.search.optuna_search import open_study, read_spec, work

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpsearch-worker", description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="search_spec.json written by the run")
    parser.add_argument("--worker-id", type=int, default=1, help="distinct per worker: seeds its sampler")
    parser.add_argument("--storage", default=None, help="override the spec's storage (RDB URL or journal path)")
    parser.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)  # set by the run
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.parent_pid is not None:
        _exit_with_parent(args.parent_pid)
    try:
        problem, settings = read_spec(args.spec)
        if args.storage:
            from dataclasses import replace

            settings = replace(settings, storage=args.storage)
        study = open_study(problem, settings, None, seed_offset=args.worker_id, cleanup=False)
        finished = work(study, problem, settings, worker_id=args.worker_id)
    except MPSearchError as e:
        print(f"mpsearch-worker: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the run's Ctrl-C: the run prints the one line; the running trial is failed
        return 130
    # One machine-readable line: which trials this worker finished (tests check none is lost).
    log.info("worker done: %s", json.dumps({"worker": args.worker_id, "finished": finished}))
    return 0


def _exit_with_parent(parent_pid: int) -> None:
    """A worker the run started dies with it: a run killed with ``kill -9`` leaves no worker behind to
    write to the study while the re-run repairs it and re-queues the trials left running."""
    try:  # Linux: the kernel sends SIGKILL when the parent exits
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):  # elsewhere: watch the parent
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent_pid:  # it died before the watch began
        os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
