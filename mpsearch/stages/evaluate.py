"""Stage ``evaluation``: real top-1 accuracy (simulated quantization) and end-to-end latency on the
device of the front's chosen candidates, the baselines, a given candidate and the ILP's pick; when none
of the quantized ones keeps the accuracy, the exact ILP's candidates at looser latency budgets
(:class:`StepBack`)."""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from mpsearch.candidate import Bits, Candidate
from mpsearch.errors import HardwareError
from mpsearch.hardware.base import Backend, LayerCostTable
from mpsearch.quant.prepare import PreparedModel
from mpsearch.report import EvaluatedCandidate
from mpsearch.search import IlpSolution, SearchProblem, solve_ilp
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
    order, and the report's notes about them (those not measured, a machine whose speed changed)."""

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


@dataclass(frozen=True)
class StepBack:
    """What the evaluation does when no quantized candidate it evaluated stays within ``drop_pts``
    accuracy points of FP32: up to ``steps`` more exact-ILP candidates (the proxy's optimum at a latency
    budget), their budgets bisected in log latency between a failing candidate (the dearest failing ILP
    candidate, else the cheapest failing one) and the proxy's unconstrained optimum, so that the run ends
    with the fastest candidate it found that keeps the accuracy rather than with FP32 alone.

    Attributes:
        problem: The search's problem (its proxy, costs and activation / BOPs budgets).
        drop_pts: ``search.accuracy_drop_pts``.
        steps: ``search.step_back``; 0: off.
        weight_kib: The run's weight budget, kept by every step.
    """

    problem: SearchProblem
    drop_pts: float
    steps: int
    weight_kib: float | None = None

    def candidates(self, todo: Sequence[Todo], accuracies: Sequence[float], accuracy: Callable[[Candidate], float],
                   predicted_ms: Callable[[Candidate], float]) -> tuple[list[Todo], list[float], str | None]:
        """The step-back candidates not in ``todo``, their accuracies and the report's note (None: no step).

        Args:
            todo: The candidates evaluated, ``accuracies`` their accuracies (an ``fp32`` label is the reference).
            accuracy: The cached accuracy of a candidate.
            predicted_ms: Its predicted latency (the cost table's, which the ILP's budgets are in).
        """
        fp32 = next((a for t, a in zip(todo, accuracies) if t.label == "fp32"), None)
        if fp32 is None or self.steps <= 0:
            return [], [], None
        floor = fp32 - self.drop_pts / 100 - 1e-12
        reference = Candidate.uniform(self.problem.layers, 32, 32)
        quantized = [(t, a) for t, a in zip(todo, accuracies) if t.candidate != reference]
        if not quantized or any(a >= floor for _, a in quantized):
            return [], [], None
        bounds = self._bounds([t for t, _ in quantized], predicted_ms)
        if bounds is None:
            return [], [], None
        added, accs = self._bisect(*bounds, floor, accuracy, {t.candidate for t in todo} | {reference},
                                   {t.label for t in todo})
        closest, acc = max(((t.label, a) for t, a in quantized), key=lambda p: p[1])
        tried = ", ".join(f"{t.label} {100 * a:.2f}%" for t, a in zip(added, accs)) or "none new"
        held = [t.label for t, a in zip(added, accs) if a >= floor]
        pts = f"{self.drop_pts:g} point{'' if self.drop_pts == 1 else 's'}"
        note = (f"No quantized candidate of the search kept accuracy within {pts} of FP32 ({100 * fp32:.2f}%; "
                f"the closest, {closest}, {100 * acc:.2f}%), so the exact ILP stepped back to looser latency "
                f"budgets: {tried}; " + (f"{held[-1]} is the fastest of them that keeps it (predicted)." if held else
                                         f"none of them keeps it (search.step_back={self.steps} steps)."))
        return added, accs, note

    def _bounds(self, failing: Sequence[Todo],
                predicted_ms: Callable[[Candidate], float]) -> tuple[float, float] | None:
        """Predicted latencies (ms) to bisect between, or None where no failing candidate is cheaper than
        the proxy's optimum. The ILP's candidates get more accurate as its budget grows, so a failing one
        bounds the bisection from below; any other failing candidate says nothing about the ILP's at its
        latency: the cheapest of them bounds it."""
        top = solve_ilp(self.problem, None, self.weight_kib)
        if top is None:
            return None
        hi = top.objectives.latency_ms
        ilp = [ms for ms in (predicted_ms(t.candidate) for t in failing if t.kind == "ilp") if ms < hi]
        if ilp:
            return max(ilp), hi
        other = [ms for ms in (predicted_ms(t.candidate) for t in failing) if ms < hi]
        return (min(other), hi) if other else None

    def _bisect(self, lo: float, hi: float, floor: float, accuracy: Callable[[Candidate], float],
                seen: set[Candidate], labels: set[str]) -> tuple[list[Todo], list[float]]:
        """At most ``steps`` ILP candidates at budgets bisected in log latency: one that keeps ``floor`` moves
        the upper bound to its latency, one that does not moves the lower bound to its budget. Those not in
        ``seen``, labelled ``ilp@<budget>ms`` (digits enough to differ from ``labels``), with accuracies."""
        added: list[Todo] = []
        accs: list[float] = []
        for _ in range(self.steps):
            if hi <= lo * 1.001:
                break
            budget = math.sqrt(lo * hi)
            sol = solve_ilp(self.problem, budget, self.weight_kib)
            if sol is None:
                lo = budget
                continue
            acc = accuracy(sol.candidate)
            if sol.candidate not in seen:
                seen.add(sol.candidate)
                label = next(f"ilp@{budget:.{d}g}ms" for d in range(4, 18) if f"ilp@{budget:.{d}g}ms" not in labels)
                labels.add(label)
                added.append(Todo(label, "ilp", None, sol.candidate))
                accs.append(acc)
            if acc >= floor:
                hi = sol.objectives.latency_ms
            else:
                lo = budget
        return added, accs


def check_failure_rate(todo: Sequence[tuple[Any, ...]], measurements: list[Any], max_rate: float) -> None:
    """Failed measurements are values (reported as "not measured"), but past ``max_rate`` the run stops."""
    failed = [(t[0], m.error) for t, m in zip(todo, measurements) if not m.ok]
    if failed and len(failed) > max_rate * len(todo):
        label, error = failed[0]
        error = str(error).strip().splitlines()[0] if error else "no timing"
        raise HardwareError(f"{len(failed)} of {len(todo)} end-to-end measurements failed (e.g. {label}: {error}), "
                            f"more than search.max_failure_rate={max_rate:g}; the study and caches are kept, so "
                            "fix the device and re-run to resume")


DRIFT = 1.2  # end-to-end latencies this much slower or faster than at calibration: the machine changed
RETIMES = 2  # times a set timed DRIFT x slower than at calibration is timed again (the fastest call kept)


def drift_ratio(todo: Sequence[Todo], measurements: Sequence[Any], table: LayerCostTable) -> float | None:
    """The median ratio of the end-to-end latencies now to those of the same candidates when the cost
    table was calibrated (the uniform baselines among them); None where none was timed both times."""
    then = table.calibration.get("measured_ms") or {}
    ratios = [m.latency_s * 1e3 / then[t.candidate.key()] for t, m in zip(todo, measurements)
              if m.ok and then.get(t.candidate.key())]
    return statistics.median(ratios) if ratios else None


def drift_note(ratio: float | None, timed: int = 1) -> str | None:
    """A note when the candidates the cost table was calibrated on now measure ``DRIFT`` x slower or faster
    than they did then (``ratio``, :func:`drift_ratio`): the machine's speed changed between the two (load,
    or a VM whose 2-thread TVM runs switch between two speeds for minutes at a time). The candidates of one
    evaluation are timed in the same rounds, so they still compare with one another; predicted latencies
    (kernels timed in the earlier state) are off by about that factor. ``timed``: how many times the set
    was timed (the fastest call kept)."""
    if ratio is None or 1 / DRIFT <= ratio <= DRIFT:
        return None
    again = f", in the fastest of {timed} timings of the set" if timed > 1 else ""
    return (f"the machine ran {max(ratio, 1 / ratio):.2f}x {'slower' if ratio > 1 else 'faster'} during this "
            f"evaluation{again} than when the cost table was calibrated (median ratio over the candidates timed "
            "both times): the candidates here were timed in the same rounds and compare with one another, "
            "but the predicted latencies are off by about that factor")


def measure_steadily(backend: Backend, prepared: PreparedModel, todo: Sequence[Todo],
                     ranges: Mapping[str, tuple[float, float]], table: LayerCostTable
                     ) -> tuple[list[Any], float | None, int]:
    """The candidates of ``todo`` timed in one interleaved call; where that call ran ``DRIFT`` x slower than
    the cost table's calibration (a spell of a slower machine state: on a 2-vCPU VM every 2-thread TVM model
    ran 1.5-2x slower for minutes, FP32 more than INT8, so even the ratios between candidates moved), timed
    again up to ``RETIMES`` times, the fastest call kept. Returns the measurements, their
    :func:`drift_ratio` and how many times the set was timed."""
    cands = [t.candidate for t in todo]
    measurements = backend.measure_many(prepared, cands, ranges)
    ratio, timed = drift_ratio(todo, measurements, table), 1
    while ratio is not None and ratio > DRIFT and timed <= RETIMES:
        log.info("end-to-end timings %.2fx slower than at the cost table's calibration: timing the %d candidates "
                 "again", ratio, len(cands))
        again = backend.measure_many(prepared, cands, ranges, fresh=True)
        timed += 1
        now = drift_ratio(todo, again, table)
        if now is not None and now < ratio and sum(m.ok for m in again) >= sum(m.ok for m in measurements):
            measurements, ratio = again, now
    return measurements, ratio, timed


def evaluate(todo: list[Todo], accuracy: Callable[[Candidate], float], backend: Backend, prepared: PreparedModel,
             ranges: Mapping[str, tuple[float, float]], table: LayerCostTable,
             score: Mapping[str, Mapping[Bits, float]], joint: Callable[[Candidate], float] | None,
             max_failure_rate: float, progress: bool = False, step_back: StepBack | None = None) -> Evaluation:
    """Accuracy of every candidate, then one interleaved end-to-end measurement of them all.

    Args:
        accuracy: Top-1 accuracy of a candidate on the test split, cached
            (:func:`~mpsearch.stages.accuracy.cached_accuracy`).
        score: The additive proxy (NaN for a candidate with a pair outside it); ``joint`` replaces it.
        max_failure_rate: ``search.max_failure_rate``.
        progress: Show a progress bar (with ETA) over the candidates' accuracy runs, the stage's long part.
        step_back: Where no quantized candidate keeps the accuracy, its exact-ILP candidates are
            evaluated and measured too (after ``todo``, interleaved with it).

    Raises:
        HardwareError: More measurements failed than ``max_failure_rate`` allows.
    """
    from tqdm import tqdm

    layers = prepared.layer_names
    accuracies = [accuracy(t.candidate) for t in tqdm(todo, desc="evaluate accuracy", unit="candidate",
                                                      disable=not progress, leave=False)]
    notes = []
    if step_back is not None:
        more, more_acc, note = step_back.candidates(todo, accuracies, accuracy,
                                                    lambda c: table.predict_latency(c) * 1e3)
        todo, accuracies = [*todo, *more], [*accuracies, *more_acc]
        if note:
            log.info("%s", note)
            notes.append(note)
    measurements, ratio, timed = measure_steadily(backend, prepared, todo, ranges, table)
    check_failure_rate(todo, measurements, max_failure_rate)
    drift = drift_note(ratio, timed)
    if drift:
        log.warning("%s", drift)
        notes.append(drift)
    evaluated = []
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
