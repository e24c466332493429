"""Time runtimes in processes of their own, interleaved: the peers stage's timing at more than one thread.

Three runtimes in one process each keep a thread pool (TVM's, ONNX Runtime's, PyTorch's OpenMP one), and
on the cores of a small machine they take them from each other: in one process at two threads on a 2-core
EPYC, ResNet-20's int8 library timed 35-43 ms against 0.2-0.3 ms alone, and with a pause before each
runtime's turn still 0.24-0.43 ms from one round to the next (TVM pins its worker threads to cores; the
other pools' threads then share them). Here each runtime runs in a spawned process of its own, on
``threads`` threads (its own setting: PyTorch's, the session's, TVM's pool); the parent asks one process
at a time to run a round of calls, once every runner's process and its own have been quiet for a moment
(their threads together ran less than ``QUIET_CPU_S`` of CPU in ``QUIET_WINDOW_S``: a pool that spins
after its last call has gone to sleep; :func:`wait_quiet`), so only one runtime's pool is awake while it
is timed.
Where the processes' CPU time cannot be read (no ``/proc``), a fixed pause (``GAP_S``) stands in.

A runner is described by files and arrays, or a module multiprocessing can pickle:

- ``Runner("onnx", path)``: an ONNX model, timed in an ONNX Runtime CPU session (:func:`ort_session`);
  ``per_sample``: one session call per sample of the inputs' batch, in one timed call;
- ``Runner("torch", model=module)``: a PyTorch module, carried to the child by multiprocessing's own
  pickling when the process starts (parent to child, never through a file; a class defined inside a
  function cannot travel, and that runner is an error);
- ``Runner("tvm", path, args=path)``: an exported library run by the Relax VM with ``main``'s arguments
  (inputs, then parameters) from an ``.npz`` of ``arg0``, ``arg1``, ... (both written by
  :meth:`~mpsearch.hardware.tvm_backend.TVMBackend.library_runner`, run by
  :func:`~mpsearch.hardware.session.saved_call`)

Every runner is timed on ``inputs`` (the model's inputs: batch 1 in the peers stage, any batch in the
``baselines`` benchmark) with denormals flushed, as mpsearch times its own kernels
(:mod:`mpsearch.hardware.fpenv`).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import statistics
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.hardware.fpenv import denormals_flushed

# The pause before each runtime's turn where the processes' CPU time cannot be read, for the previous one's pool
# threads to stop spinning: at 50 ms, with ONNX Runtime FP32's turn right after the pick's, ONNX Runtime timed
# 1.2-1.5 ms instead of 0.35-0.46 (2 threads, 2-core Zen 4; at 300 ms it did not), TVM's workers still spinning.
GAP_S = 0.2
# Quiet: every runner process's threads together ran less than QUIET_CPU_S in the last QUIET_WINDOW_S (read from
# /proc/<pid>/task/*/schedstat, nanoseconds); waited for at most QUIET_LIMIT_S before a turn.
QUIET_WINDOW_S = 0.02
QUIET_CPU_S = 0.001
QUIET_LIMIT_S = 2.0
START_TIMEOUT_S = 300.0  # a runner that has not loaded its model by then is an error row
ROUND_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Runner:
    """What one process runs (see the module docstring): ``kind`` ``onnx`` / ``torch`` / ``tvm``."""

    kind: str
    path: str = ""
    model: Any = field(default=None, compare=False)
    args: str = ""
    inputs: tuple[np.ndarray, ...] = field(default=(), compare=False)
    per_sample: bool = False


class RunnerError(RuntimeError):
    """A runner's process could not load or run its model (the message is its one-line reason)."""


def error_line(e: BaseException) -> str:
    """An exception as one line: its type and its message's first line."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def input_names(n: int) -> list[str]:
    """The ONNX graph's input names for ``n`` inputs."""
    return ["x"] if n == 1 else [f"x{i}" for i in range(n)]


def ort_session(path: Path, threads: int, profile_prefix: str | None = None) -> Any:
    """An ONNX Runtime CPU session on ``threads`` threads, every graph optimization on, denormals flushed
    as mpsearch runs TVM's kernels (:mod:`mpsearch.hardware.fpenv`); with ``profile_prefix``, its
    profiler writes there (``end_profiling()`` names the file)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # left at its default, creating the session would also turn the flush off on this thread
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    if profile_prefix is not None:
        so.enable_profiling, so.profile_file_prefix = True, profile_prefix
    with denormals_flushed():  # the session sets the flush on this thread: as it was after
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _threads_env(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TVM_NUM_THREADS"):
        os.environ[var] = str(threads)


def _callable(runner: Runner, threads: int) -> Callable[[], Any]:
    """The child's call of ``runner`` on its inputs."""
    if runner.kind == "onnx":
        session = ort_session(runner.path, threads)
        names = input_names(len(runner.inputs))
        if runner.per_sample:
            feeds = [{n: x[i:i + 1] for n, x in zip(names, runner.inputs)} for i in range(len(runner.inputs[0]))]
            return lambda: [session.run(None, f) for f in feeds]
        feed = dict(zip(names, runner.inputs))
        return lambda: session.run(None, feed)
    if runner.kind == "torch":
        import torch

        torch.set_num_threads(threads)
        model = runner.model.eval()
        xs = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in runner.inputs)

        def call() -> Any:
            with torch.inference_mode():
                return model(*xs)
        return call
    if runner.kind == "tvm":
        from mpsearch.hardware.session import saved_call

        return saved_call(runner.path, runner.args, threads)
    raise ValueError(f"unknown runner kind {runner.kind!r}")


def _serve(conn: Any, runner: Runner, threads: int) -> None:
    """The child: load ``runner``, answer its first call's seconds, then for each ``n`` received run one
    untimed call and ``n`` timed ones and answer the milliseconds per call; ``None`` ends it. Ctrl-C is
    the parent's to handle (its one-line message): the child ends when the parent closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _threads_env(threads)
    try:
        with denormals_flushed():
            call = _callable(runner, threads)
            start = time.perf_counter()
            call()
            first = time.perf_counter() - start
        conn.send(("ready", first))
    except (EOFError, BrokenPipeError):
        return
    except BaseException as e:  # noqa: BLE001 - the parent turns it into the runner's error row
        try:
            conn.send(("error", error_line(e), traceback.format_exc()))
        except (EOFError, BrokenPipeError):
            pass
        return
    try:
        with denormals_flushed():
            while (n := conn.recv()) is not None:
                call()
                start = time.perf_counter()
                for _ in range(n):
                    call()
                conn.send((time.perf_counter() - start) / n * 1e3)
    except (EOFError, BrokenPipeError):  # the parent is gone (killed): nothing to answer
        return


def cpu_seconds(pids: list[int], skip: frozenset[int] = frozenset()) -> float | None:
    """CPU time run so far by every thread of the processes ``pids`` but the threads ``skip`` (Linux's
    per-thread ``schedstat``); None where it cannot be read (no ``/proc``). A thread that ends while it is
    read counts nothing."""
    total = 0
    for pid in pids:
        try:
            tasks = [t for t in os.scandir(f"/proc/{pid}/task") if int(t.name) not in skip]
        except OSError:
            return None
        for task in tasks:
            try:
                with open(os.path.join(task.path, "schedstat")) as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


def wait_quiet(pids: list[int], window_s: float = QUIET_WINDOW_S, cpu_s: float = QUIET_CPU_S,
               limit_s: float = QUIET_LIMIT_S, fallback_s: float = GAP_S) -> float:
    """Wait until the processes ``pids`` ran less than ``cpu_s`` of CPU in a window of ``window_s`` (their
    thread pools asleep; the calling thread, which waits, not counted), at most ``limit_s``; where their
    CPU time cannot be read, ``fallback_s``. Returns the seconds waited."""
    skip = frozenset({threading.get_native_id()})
    start = time.perf_counter()
    before = cpu_seconds(pids, skip)
    if before is None:
        time.sleep(fallback_s)
        return time.perf_counter() - start
    while True:
        time.sleep(window_s)
        now = cpu_seconds(pids, skip)
        waited = time.perf_counter() - start
        if now is None or now - before < cpu_s or waited >= limit_s:
            return waited
        before = now


def time_in_processes(runners: Mapping[str, Runner], threads: int, rounds: int,
                      budget_s: float = 0.05, gap_s: float = GAP_S) -> tuple[dict[str, float], dict[str, str]]:
    """Median milliseconds per call of each runner (:func:`round_times_in_processes`) and the one-line error
    of each runner whose process could not load or run it."""
    samples, errors = round_times_in_processes(runners, threads, rounds, budget_s, gap_s)
    return {key: statistics.median(s) for key, s in samples.items()}, errors


def round_times_in_processes(runners: Mapping[str, Runner], threads: int, rounds: int, budget_s: float = 0.05,
                             gap_s: float = GAP_S) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Milliseconds per call of each runner in every round, each runner in a process of its own at
    ``threads`` threads, timed once per round (about ``budget_s`` seconds of calls, counted from its first
    call), rounds interleaved, one process at a time once all of them are quiet (:func:`wait_quiet`, its
    fallback pause ``gap_s``; ``gap_s`` 0: no wait at all); and the one-line error of each runner whose
    process could not load or run it (it has no samples)."""
    ctx = multiprocessing.get_context("spawn")
    procs: dict[str, tuple[Any, Any]] = {}
    errors: dict[str, str] = {}
    calls: dict[str, int] = {}
    try:
        for key, runner in runners.items():
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, runner, threads), daemon=True,
                               name=f"mpsearch-peer-{key}")
            try:
                proc.start()  # pickles the runner for the child
            except Exception as e:  # noqa: BLE001 - e.g. a model class defined inside a function
                errors[key] = f"cannot be sent to a process of its own ({error_line(e)})"
                parent.close()
                continue
            finally:
                child.close()
            procs[key] = (proc, parent)
        for key, (proc, conn) in procs.items():  # loading in parallel; answers in order
            reply = _answer(proc, conn, START_TIMEOUT_S, "did not load in time")
            if reply[0] == "ready":
                calls[key] = max(1, min(1000, int(budget_s / max(reply[1], 1e-6))))
            else:
                errors[key] = reply[1]
        samples: dict[str, list[float]] = {key: [] for key in calls}
        for _ in range(rounds):
            for key in calls:
                if key in errors:
                    continue
                if gap_s > 0:  # this process's pools too (PyTorch's, ONNX Runtime's: the peers' accuracy)
                    wait_quiet([os.getpid(), *(p.pid for p, _ in procs.values() if p.is_alive())], fallback_s=gap_s)
                proc, conn = procs[key]
                conn.send(calls[key])
                reply = _answer(proc, conn, ROUND_TIMEOUT_S, f"a round of {calls[key]} calls took over "
                                                             f"{ROUND_TIMEOUT_S:.0f} s")
                if isinstance(reply, tuple):
                    errors[key] = reply[1]
                else:
                    samples[key].append(reply)
    finally:
        for proc, conn in procs.values():
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return {key: s for key, s in samples.items() if s and key not in errors}, errors


def _answer(proc: Any, conn: Any, timeout_s: float, late: str) -> Any:
    """The child's next answer, or ``("error", reason)`` if it sent none within ``timeout_s`` or died."""
    try:
        if conn.poll(timeout_s):
            return conn.recv()
    except (EOFError, OSError):
        proc.join(timeout=5)
        return ("error", f"its process ended (exit code {proc.exitcode})")
    return ("error", late)


__all__ = ["GAP_S", "Runner", "RunnerError", "cpu_seconds", "error_line", "input_names", "ort_session",
           "round_times_in_processes", "time_in_processes", "wait_quiet"]
