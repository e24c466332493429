"""Stage ``evaluation``: real top-1 accuracy (simulated quantization) and end-to-end latency on the
device of the front's chosen candidates, the baselines, a given candidate and the ILP's pick."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from mpsearch.candidate import Bits, Candidate
from mpsearch.errors import HardwareError
from mpsearch.hardware.base import Backend, LayerCostTable
from mpsearch.quant.prepare import PreparedModel
from mpsearch.report import EvaluatedCandidate
from mpsearch.search import IlpSolution
from mpsearch.stages.cost import BASELINES

log = logging.getLogger("mpsearch.pipeline")  # the run's console lines keep their logger name


class Todo(NamedTuple):
    """One candidate to evaluate: its report label, kind (``pareto``/``baseline``/``ilp``) and trial."""

    label: str
    kind: str
    trial: int | None
    candidate: Candidate


@dataclass
class Evaluation:
    """What the ``evaluation`` stage hands on: the evaluated candidates, in :func:`to_evaluate`'s
    order, and the report's notes about them (those not measured)."""

    candidates: list[EvaluatedCandidate]
    notes: list[str]


def to_evaluate(chosen: Sequence[tuple[Any, Candidate]], layers: list[str], given: Candidate | None = None,
                pick: tuple[str, IlpSolution] | None = None) -> list[Todo]:
    """The front's chosen ``(trial, candidate)`` pairs, the :data:`BASELINES`, ``given`` and the ILP's pick."""
    todo = [Todo(f"pareto-{i}", "pareto", t.number, c) for i, (t, c) in enumerate(chosen)]
    todo += [Todo(label, "baseline", None, Candidate.uniform(layers, *pair)) for label, pair in BASELINES.items()]
    if given is not None:
        todo.append(Todo("given", "baseline", None, given))
    if pick is not None:
        todo.append(Todo(pick[0], "ilp", None, pick[1].candidate))
    return todo


def check_failure_rate(todo: Sequence[tuple[Any, ...]], measurements: list[Any], max_rate: float) -> None:
    """Failed measurements are values (reported as "not measured"), but past ``max_rate`` the run stops."""
    failed = [(t[0], m.error) for t, m in zip(todo, measurements) if not m.ok]
    if failed and len(failed) > max_rate * len(todo):
        label, error = failed[0]
        error = str(error).strip().splitlines()[0] if error else "no timing"
        raise HardwareError(f"{len(failed)} of {len(todo)} end-to-end measurements failed (e.g. {label}: {error}), "
                            f"more than search.max_failure_rate={max_rate:g}; the study and caches are kept, so "
                            "fix the device and re-run to resume")


def evaluate(todo: list[Todo], accuracy: Callable[[Candidate], float], backend: Backend, prepared: PreparedModel,
             ranges: Mapping[str, tuple[float, float]], table: LayerCostTable,
             score: Mapping[str, Mapping[Bits, float]], joint: Callable[[Candidate], float] | None,
             max_failure_rate: float, progress: bool = False) -> Evaluation:
    """Accuracy of every candidate, then one interleaved end-to-end measurement of them all.

    Args:
        accuracy: Top-1 accuracy of a candidate on the test split, cached
            (:func:`~mpsearch.stages.accuracy.cached_accuracy`).
        score: The additive proxy (NaN for a candidate with a pair outside it); ``joint`` replaces it.
        max_failure_rate: ``search.max_failure_rate``.
        progress: Show a progress bar (with ETA) over the candidates' accuracy runs, the stage's long part.

    Raises:
        HardwareError: More measurements failed than ``max_failure_rate`` allows.
    """
    from tqdm import tqdm

    layers = prepared.layer_names
    accuracies = [accuracy(t.candidate) for t in tqdm(todo, desc="evaluate accuracy", unit="candidate",
                                                      disable=not progress, leave=False)]
    measurements = backend.measure_many(prepared, [t.candidate for t in todo], ranges)
    check_failure_rate(todo, measurements, max_failure_rate)
    evaluated, notes = [], []
    for (label, kind, trial, cand), acc, meas in zip(todo, accuracies, measurements):
        if not meas.ok:
            notes.append(f"{label}: not measured ({meas.error})")
        proxy = joint(cand) if joint is not None else \
            sum(score[n][cand[n]] for n in layers) if all(cand[n] in score[n] for n in layers) else float("nan")
        evaluated.append(EvaluatedCandidate(
            label=label, candidate=cand, kind=kind, proxy=proxy,
            predicted_latency_ms=table.predict_latency(cand) * 1e3,
            measured_latency_ms=meas.latency_s * 1e3 if meas.ok else None,
            latency_std_ms=meas.std_s * 1e3 if meas.ok else None,
            weight_bytes=table.predict_weight_bytes(cand), accuracy=acc, trial=trial,
            activation_bytes=table.predict_activation_bytes(cand)))
        log.info("%-9s %-28s acc %.4f  latency %s ms (predicted %.3f)", label, cand.describe(), acc,
                 f"{meas.latency_s * 1e3:.3f}" if meas.ok else "n/a", table.predict_latency(cand) * 1e3)
    return Evaluation(evaluated, notes)
