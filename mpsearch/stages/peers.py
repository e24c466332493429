"""Stage ``peers``: what a user would run instead, timed beside the run's pick on this machine.

The rows: PyTorch eager FP32 (the user's own model), and, with ``onnxruntime`` and ``onnx`` (dependencies
of mpsearch; a row says so where an install left them out), ONNX Runtime FP32, INT8 static (QDQ,
per-channel weights, min-max calibration on the run's calibration batches) and, for a model with integer
(token) inputs, INT8 dynamic.
Each peer's accuracy is taken on the run's test split, as the candidates' is; each peer is timed at batch 1
on the profile's threads, in the same interleaved rounds as the pick's compiled library (the run's tuned
kernels), so a drift of the machine hits them alike. At one thread they all run in this process; at more,
each runtime runs in a process of its own, one at a time (:mod:`mpsearch.stages.peer_processes`: in one
process their thread pools take each other's cores). Only where the run measures on this machine's CPU: a
board over RPC or a GPU has no peer here, and says so.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mpsearch.hardware.fpenv import denormals_flushed
from mpsearch.report.document import peers_sentence, plain_text
from mpsearch.scoring import top1_hits
from mpsearch.stages.peer_processes import (Runner, RunnerError, error_line, input_names, ort_session,
                                            time_in_processes)

log = logging.getLogger(__name__)

ROUNDS = 7
# The threads of a skipped stage's note (a board or GPU profile: nothing timed here).
PEER_THREADS = 1
LABELS = {"pytorch_fp32": "PyTorch FP32 (eager)", "ort_fp32": "ONNX Runtime FP32",
          "ort_int8_static": "ONNX Runtime INT8 static (QDQ, per-channel)",
          "ort_int8_dynamic": "ONNX Runtime INT8 dynamic (per-channel)"}


@dataclass
class PeerRow:
    """One way to run the model: its latency at batch 1 (median ms) and test accuracy, or why it has none."""

    key: str
    latency_ms: float | None = None
    accuracy: float | None = None
    error: str | None = None

    @property
    def method(self) -> str:
        return LABELS.get(self.key, self.key)


@dataclass
class Peers:
    """The peers and the pick, timed in the same rounds (``pick_ms``); ``skipped``: why there are none."""

    rows: list[PeerRow] = field(default_factory=list)
    pick: str | None = None
    pick_ms: float | None = None
    pick_accuracy: float | None = None
    device: str = ""
    threads: int = 0
    skipped: str | None = None
    rounds: int = ROUNDS
    isolated: bool = False  # each runtime timed in a process of its own (more than one thread)

    def fastest(self) -> PeerRow | None:
        timed = [r for r in self.rows if r.latency_ms is not None]
        return min(timed, key=lambda r: r.latency_ms) if timed else None

    def note(self) -> str:
        """The console's line: the pick against the fastest peer (the report's Peers section in words),
        then every peer."""
        head = plain_text(peers_sentence(self.to_dict()) or "")
        if self.skipped:
            return head

        def acc(a: float | None) -> str:
            return "" if a is None else f", {100 * a:.2f}%"
        rows = "; ".join(f"{r.method} {r.latency_ms:.3f} ms{acc(r.accuracy)}" if r.latency_ms is not None
                         else f"{r.method}: not run ({r.error})" for r in self.rows)
        own = ", each runtime in a process of its own" if self.isolated else ""
        return f"{head} Peers on this machine ({self.device}; batch 1, {self.rounds} interleaved rounds{own}): {rows}."

    def to_dict(self) -> dict[str, Any]:
        best = self.fastest()
        return {"pick": self.pick, "pick_ms": self.pick_ms, "pick_accuracy": self.pick_accuracy,
                "device": self.device, "threads": self.threads, "batch": 1, "rounds": self.rounds,
                "isolated": self.isolated, "skipped": self.skipped,
                "fastest_peer": best.key if best else None,
                "pick_over_fastest_peer": (self.pick_ms / best.latency_ms) if best and self.pick_ms else None,
                "rows": [{"key": r.key, "method": r.method, "latency_ms": r.latency_ms, "accuracy": r.accuracy,
                          "error": r.error} for r in self.rows]}


def pick_label(candidates: Sequence[Any], drop_pts: float) -> str | None:
    """The fastest measured candidate within ``drop_pts`` accuracy points of FP32 (FP32 itself where none
    is): what a user deploys at FP32's accuracy."""
    fp32 = next((c for c in candidates if c.label == "fp32"), None)
    if fp32 is None or fp32.accuracy is None:
        return None
    floor = fp32.accuracy - drop_pts / 100 - 1e-12
    ok = [c for c in candidates if c.accuracy is not None and c.accuracy >= floor and c.measured_latency_ms]
    return min(ok, key=lambda c: c.measured_latency_ms).label if ok else None


def _inputs(x: Any) -> tuple[torch.Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _accuracy(predict: Callable[..., Any], data: Sequence[tuple[Any, torch.Tensor]]) -> float:
    correct = total = 0
    for x, y in data:
        hits, n = top1_hits(torch.as_tensor(np.asarray(predict(*_inputs(x)))), y)
        correct += hits
        total += n
    return correct / total


def onnx_models(model: nn.Module, example: tuple[torch.Tensor, ...], calib: Sequence[tuple[torch.Tensor, ...]],
                workdir: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """``model`` as ONNX (FP32, ``ort_fp32``) and quantized by ONNX Runtime as a user would: static INT8
    (``ort_int8_static``: QDQ, per-channel weights, calibrated on ``calib``) and, for integer (token)
    inputs, dynamic INT8 (``ort_int8_dynamic``). Returns the model files, and the error of each
    quantized one that could not be made."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    names = input_names(len(example))
    fp32, pre = workdir / "model.onnx", workdir / "model.pre.onnx"
    torch.onnx.export(model, example, str(fp32), dynamo=False, input_names=names, output_names=["y"],
                      dynamic_axes={**{n: {0: "n"} for n in names}, "y": {0: "n"}}, opset_version=17)
    quant_pre_process(str(fp32), str(pre))
    paths: dict[str, Path] = {"ort_fp32": fp32}
    errors: dict[str, str] = {}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{n: t.numpy() for n, t in zip(names, xs)} for xs in calib])

        def get_next(self):  # noqa: ANN201 - ONNX Runtime's interface
            return next(self.it, None)

    quantizers = {"ort_int8_static": lambda out: quantize_static(
        str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)}
    if any(not t.is_floating_point() for t in example):
        quantizers["ort_int8_dynamic"] = lambda out: quantize_dynamic(str(pre), str(out), per_channel=True,
                                                                      weight_type=QuantType.QInt8)
    for key, quantize in quantizers.items():
        try:
            quantize(workdir / f"model.{key}.onnx")
            paths[key] = workdir / f"model.{key}.onnx"
        except Exception as e:  # noqa: BLE001 - one peer that cannot be built is a row saying why
            errors[key] = error_line(e)
    return paths, errors


def _onnx_sessions(paths: Mapping[str, Path], n_inputs: int, threads: int) -> dict[str, Any]:
    """Callables running each :func:`onnx_models` model on ``threads`` threads."""
    names = input_names(n_inputs)
    calls = {}
    for key, path in paths.items():
        s = ort_session(path, threads)
        calls[key] = lambda *xs, s=s: s.run(None, {n: x.numpy() for n, x in zip(names, xs)})[0]
    return calls


def _ms_per_call(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def time_interleaved(fns: Mapping[str, Callable[[], Any]], rounds: int = ROUNDS,
                     budget_s: float = 0.05) -> dict[str, float]:
    """Median milliseconds per call of each function, each timed once per round, rounds interleaved (a
    round calls a function about ``budget_s`` seconds' worth, counted from a first, warm-up call)."""
    calls = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        calls[name] = max(1, min(1000, int(budget_s / max(time.perf_counter() - start, 1e-6))))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, fn in fns.items():
                samples[name].append(_ms_per_call(fn, calls[name]))
    return {name: statistics.median(s) for name, s in samples.items()}


def measure_peers(model: nn.Module, calib: Sequence[tuple[Any, torch.Tensor]],
                  test: Sequence[tuple[Any, torch.Tensor]], pick: str | None, pick_accuracy: float | None,
                  pick_call: Callable[[], Any] | None, example: tuple[torch.Tensor, ...], threads: int,
                  device: str, rounds: int = ROUNDS, pick_runner: Runner | None = None) -> Peers:
    """Every peer of ``model`` on this machine, and the pick, timed in the same interleaved rounds on
    ``example`` (one sample of every input) at ``threads`` threads: at one, in this process, the pick as
    ``pick_call`` (one batch-1 call of its library); at more, each runtime in a process of its own
    (:func:`~mpsearch.stages.peer_processes.time_in_processes`), the pick as ``pick_runner``.

    Args:
        calib: The run's calibration batches (ONNX Runtime's static calibration: the first four).
        test: The run's test batches (every peer's accuracy).
    """
    isolated = threads > 1
    out = Peers(pick=pick, pick_accuracy=pick_accuracy, device=device, threads=threads, rounds=rounds,
                isolated=isolated)
    model = model.eval()
    calls: dict[str, Callable[..., Any]] = {"pytorch_fp32": lambda *xs: model(*xs)}
    paths: dict[str, Path] = {}
    errors: dict[str, str] = {}
    before = torch.get_num_threads()
    # accuracy on the test split at the run's threads too; where the runtimes are timed in processes of their
    # own, each turn waits for this process's pools to sleep as well (peer_processes.wait_quiet)
    torch.set_num_threads(threads)
    ort_log = logging.getLogger("onnxruntime")
    ort_level = ort_log.level
    ort_log.setLevel(logging.WARNING)  # its quantization tools log each step at INFO: not the run's console
    try:
        # every peer runs, and is timed, with denormals flushed as the run timed its candidates (an ONNX
        # Runtime session sets the flush on the calling thread too); this thread's state as it was after
        with denormals_flushed(), tempfile.TemporaryDirectory(prefix="mpsearch-peers-") as tmp:
            try:
                import onnx  # noqa: F401 - torch.onnx.export needs it
                import onnxruntime  # noqa: F401
            except ImportError as e:
                errors["ort_fp32"] = f"{e.name} is not installed (pip install onnxruntime onnx)"
            else:
                try:
                    with torch.no_grad():
                        paths, errors = onnx_models(model, example, [_inputs(x) for x, _ in calib][:4], Path(tmp))
                    calls.update(_onnx_sessions(paths, len(example), threads))
                except Exception as e:  # noqa: BLE001 - a model ONNX cannot take: the row says why
                    errors["ort_fp32"] = error_line(e)
            with torch.no_grad():
                accuracy = {key: _accuracy(fn, test) for key, fn in calls.items()}
            if isolated:
                ms = _time_isolated(model, paths, example, pick_runner, threads, rounds, errors)
            else:
                fns = {key: (lambda fn=fn: fn(*example)) for key, fn in calls.items()}
                if pick_call is not None:
                    fns["_pick"] = pick_call
                ms = time_interleaved(fns, rounds)
    finally:
        torch.set_num_threads(before)
        ort_log.setLevel(ort_level)
    out.rows = [PeerRow(key, ms.get(key), accuracy[key], errors.pop(key, None)) for key in calls]
    out.rows += [PeerRow(key, error=err) for key, err in errors.items()]
    out.pick_ms = ms.get("_pick")
    return out


def _time_isolated(model: nn.Module, paths: Mapping[str, Path], example: tuple[torch.Tensor, ...],
                   pick_runner: Runner | None, threads: int, rounds: int, errors: dict[str, str]) -> dict[str, float]:
    """The milliseconds per call of PyTorch, each ONNX Runtime model of ``paths`` and the pick, each in a
    process of its own (:func:`~mpsearch.stages.peer_processes.time_in_processes`); a runtime that could
    not be timed gets its reason in ``errors``. The pick's failure is raised (:class:`RunnerError`)."""
    xs = tuple(t.numpy() for t in example)
    runners: dict[str, Runner] = {"pytorch_fp32": Runner("torch", model=model, inputs=xs)}
    runners.update({key: Runner("onnx", str(path), inputs=xs) for key, path in paths.items()})
    if pick_runner is not None:
        runners["_pick"] = pick_runner
    ms, failed = time_in_processes(runners, threads, rounds)
    if "_pick" in failed:
        raise RunnerError(f"the pick's library: {failed.pop('_pick')}")
    errors.update({key: f"not timed: {err}" for key, err in failed.items()})
    return ms


def has_peers(backend: Any) -> bool:
    """Whether ``backend`` times on a device, so that its run has peers (or a note on why not here): not
    estimated costs, not the test backends."""
    return hasattr(backend, "runs_here") and not getattr(backend, "estimated", False)


def run_peers(backend: Any, model: nn.Module, prepared: Any, ranges: Mapping[str, tuple[float, float]],
              calib: Sequence[tuple[Any, torch.Tensor]], test: Sequence[tuple[Any, torch.Tensor]],
              candidates: Sequence[Any], drop_pts: float) -> Peers | None:
    """The stage: the peers of the run's model beside its pick (:func:`pick_label`), or None for a backend
    that times nothing on a device (estimated costs, the test backends). A failure here is the report's
    note, not the run's end: everything before it is computed and kept."""
    if not has_peers(backend):
        return None
    if not backend.runs_here:
        return Peers(skipped=f"profile {backend.profile.name!r} runs its code on another device (a board over RPC "
                             "or a GPU); peers run on this machine's CPU only", threads=PEER_THREADS)
    from mpsearch.hardware.tvm_backend import host_description  # this machine, not the run's thread count

    label = pick_label(candidates, drop_pts)
    by_label = {c.label: c for c in candidates}
    threads = backend.profile.resolved_threads()
    try:
        example = tuple(t[:1] for t in _inputs(test[0][0]))
        accuracy = by_label[label].accuracy if label else None
        if threads > 1:  # each runtime in a process of its own: the pick as an exported library
            with tempfile.TemporaryDirectory(prefix="mpsearch-pick-") as tmp:
                runner = backend.library_runner(prepared, by_label[label].candidate, ranges, tmp) if label else None
                return measure_peers(model, calib, test, label, accuracy, None, example, threads,
                                     host_description(), pick_runner=runner)
        pick_call = backend.library(prepared, by_label[label].candidate, ranges) if label else None
        with _tvm_threads(1, threads):
            return measure_peers(model, calib, test, label, accuracy, pick_call, example, 1, host_description())
    except Exception as e:  # noqa: BLE001 - the run's results stand without its peers
        log.warning("peers: %s", error_line(e))
        return Peers(skipped=f"timing them failed ({error_line(e)})", threads=threads)


@contextlib.contextmanager
def _tvm_threads(threads: int, after: int) -> Iterator[None]:
    """This process's TVM thread pool at ``threads``, then at ``after``."""
    from mpsearch.hardware.threads import use_threads

    use_threads(threads)
    try:
        yield
    finally:
        use_threads(after)
