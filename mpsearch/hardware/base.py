"""The hardware seam: a :class:`Backend` prices candidates from a per-layer cost table and measures
compiled candidates end to end. Nothing here imports TVM."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

import numpy as np

from mpsearch.candidate import Bits, Candidate
from mpsearch.quant.prepare import PreparedModel


@dataclass(frozen=True)
class Measurement:
    """A timing or the error that prevented it (failures are values, not exceptions)."""

    latency_s: float | None = None
    std_s: float | None = None
    error: str | None = None
    samples: tuple[float, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None and self.latency_s is not None

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> Measurement:
        """The mean of the repeat samples (each itself a mean over ``measure.number`` calls), after
        dropping samples a disturbance slowed down: those more than ``OUTLIER_MADS`` scaled median
        absolute deviations above the median (another process only ever adds time). The mean, not
        the median, because expectations add up: the cost model predicts a candidate as a sum of
        kernels, and the mean of a sum is the sum of the means. Without the cut, one preempted repeat
        (measured: a 0.3 ms kernel whose first two of seven repeats took 11 and 6.5 ms) outweighs all the others."""
        arr = np.asarray(samples, dtype=float)
        kept = arr
        if len(arr) >= 3:
            med = np.median(arr)
            mad = 1.4826 * np.median(np.abs(arr - med))
            kept = arr[arr <= med + OUTLIER_MADS * max(mad, 0.01 * med)]
        return cls(float(kept.mean()), float(kept.std()), None, tuple(float(s) for s in arr))


OUTLIER_MADS = 3.0  # samples slower than median + 3 MADs are disturbances, not the kernel's speed


@dataclass
class LayerCostTable:
    """Measured kernel latency of every layer at every bit pair, plus the rest of the model.

    Because each layer is one kernel whose code depends only on its own bits (see
    ``hardware/kernels/``), a candidate's latency is ``scale`` times the sum of its layers' kernels
    plus ``other_s`` (pooling, reshapes, runtime overhead). ``latency_s`` holds each kernel timed
    alone; ``scale`` and ``other_s`` are fitted by least squares on end-to-end measurements of the
    uniform candidates and a few seeded random mixed ones (``calibration`` records the fit). Kernels inside the model run faster than
    alone (warm caches and thread pool, no per-call launch): ``scale`` measures that, per profile.

    Activation memory: ``activation_bytes`` is the inter-kernel storage of TVM's static memory plan
    (the same for every candidate, since kernels exchange fp32 tensors), ``workspace_bytes`` each
    kernel's own buffers; kernels run one at a time, so a candidate's peak is the planned storage
    plus its largest workspace (see ``hardware/memory_plan.py``).
    """

    profile: str
    layers: list[str]
    pairs: list[Bits]
    latency_s: dict[str, dict[Bits, float]]
    weight_bytes: dict[str, dict[Bits, int]]
    kernel_of: dict[str, dict[Bits, str]] = field(default_factory=dict)  # layer -> pair -> kernel key
    other_s: float = 0.0
    untuned: list[str] = field(default_factory=list)
    workspace_bytes: dict[str, dict[Bits, int]] = field(default_factory=dict)
    activation_bytes: int = 0
    scale: float = 1.0
    calibration: dict[str, object] = field(default_factory=dict)  # how scale/other_s were fitted

    def kernel_sum(self, candidate: Mapping[str, Bits]) -> float:
        """The candidate's kernels timed alone, summed (uncalibrated)."""
        return sum(self.latency_s[name][tuple(bits)] for name, bits in candidate.items())

    def predict_latency(self, candidate: Mapping[str, Bits]) -> float:
        return self.other_s + self.scale * self.kernel_sum(candidate)

    def layer_latency_s(self) -> dict[str, dict[Bits, float]]:
        """Each layer's cost inside the model (``scale`` x its kernel alone): what the search adds up."""
        return {n: {pair: self.scale * t for pair, t in row.items()} for n, row in self.latency_s.items()}

    def calibrate(self, kernel_sums: Sequence[float], measured: Sequence[float]) -> None:
        """Fit ``measured ≈ scale * kernel_sum + other_s`` (end-to-end measurements of candidates whose
        summed standalone kernel latencies are ``kernel_sums``), minimising the squared *relative*
        error, since the model is judged by its relative error. A negative rest is not physical: then
        the fit is proportional (``other_s = 0``). With fewer than three points, or a scale outside
        [0.25, 2], keep ``scale = 1`` and take ``other_s`` as the median residual, as an uncalibrated
        sum would."""
        x, y = np.asarray(kernel_sums, dtype=float), np.asarray(measured, dtype=float)
        scale, other, method = 1.0, max(0.0, float(np.median(y - x))) if len(x) else 0.0, "median residual"
        if len(x) >= 3 and np.ptp(x) > 0:
            a, b = np.linalg.lstsq(np.vstack([x / y, 1 / y]).T, np.ones_like(y), rcond=None)[0]
            if b < 0:  # through the origin: min sum((a x - y)/y)^2
                a, b = float(np.sum(x / y) / np.sum((x / y) ** 2)), 0.0
            if 0.25 <= a <= 2.0:
                scale, other = float(a), float(b)
                method = "least squares (relative)" if b > 0 else "proportional (relative; rest clamped at 0)"
        self.scale, self.other_s = scale, other
        fit = scale * x + other
        self.calibration = {
            "method": method, "points": int(len(x)), "scale": scale, "other_s": other,
            "fit_mape_pct": float(np.mean(np.abs(fit - y) / y) * 100) if len(x) else None,
        }

    def predict_weight_bytes(self, candidate: Mapping[str, Bits]) -> int:
        return sum(self.weight_bytes[name][tuple(bits)] for name, bits in candidate.items())

    def predict_activation_bytes(self, candidate: Mapping[str, Bits]) -> int:
        """Peak activation memory: planned inter-kernel storage + the largest kernel workspace."""
        ws = [self.workspace_bytes[name][tuple(bits)] for name, bits in candidate.items()
              if name in self.workspace_bytes]
        return self.activation_bytes + max(ws, default=0)

    def to_json(self) -> str:
        def enc(table: Mapping[str, Mapping[Bits, object]]) -> dict:
            return {n: {f"{w},{a}": v for (w, a), v in row.items()} for n, row in table.items()}
        return json.dumps({
            "profile": self.profile, "layers": self.layers, "pairs": [list(p) for p in self.pairs],
            "latency_s": enc(self.latency_s), "weight_bytes": enc(self.weight_bytes),
            "kernel_of": enc(self.kernel_of), "other_s": self.other_s, "untuned": self.untuned,
            "workspace_bytes": enc(self.workspace_bytes), "activation_bytes": self.activation_bytes,
            "scale": self.scale, "calibration": self.calibration,
        }, indent=1)

    @classmethod
    def from_json(cls, text: str) -> LayerCostTable:
        d = json.loads(text)

        def dec(table: Mapping[str, Mapping[str, object]]) -> dict:
            return {n: {tuple(int(b) for b in k.split(",")): v for k, v in row.items()} for n, row in table.items()}
        return cls(d["profile"], d["layers"], [tuple(p) for p in d["pairs"]], dec(d["latency_s"]),
                   dec(d["weight_bytes"]), dec(d["kernel_of"]), d["other_s"], d["untuned"],
                   dec(d.get("workspace_bytes", {})), int(d.get("activation_bytes", 0)),
                   float(d.get("scale", 1.0)), dict(d.get("calibration", {})))


LatencySource = Literal["measured", "estimated"]
MEASURED: Final = "measured"
ESTIMATED: Final = "estimated"
LATENCY_SOURCES: Final = (MEASURED, ESTIMATED)


class Backend(ABC):
    """Prices and measures candidates of a model for one hardware profile.

    Call order:

    1. Construct it (for a profile and a cache folder). A device that cannot be reached is an error here,
       before anything is tuned.
    2. :meth:`cost_table` once per (model, calibration, bit-pair set): every layer at every pair.
    3. Price any number of candidates from that table (:meth:`LayerCostTable.predict_latency` and the
       memory predictions: pure, no backend call).
    4. :meth:`measure` / :meth:`measure_many` the few candidates worth a real end-to-end build, and
       :meth:`run` them for their outputs. Building and running are separate steps inside, so a build
       failure and a runtime failure come back as distinct errors. :meth:`measure_many` returns every
       candidate's failure as a :class:`Measurement` with an error, never as an exception.
    5. :meth:`close`, or leave a ``with backend:`` block: stops the processes and connections it started
       (e.g. the TVM backend's loopback measurement server). Idempotent; nothing else is called after it.

    What may be cached: only results keyed by what determines them (kernel code, target, TVM version,
    threads, measurement settings), on disk under the cache folder, so that a second backend on the same
    folder returns the same cost table and measurements without tuning or timing again; in memory,
    compiled code until :meth:`close`. Never a result keyed by a layer's name or position.

    Latency source: each implementation declares :attr:`latency_source`. ``"measured"`` backends time
    code on the device and :meth:`run` it; an ``"estimated"`` backend (roofline) times nothing: its
    :meth:`measure` returns the estimate (spread 0) and :meth:`run` raises
    :class:`~mpsearch.errors.HardwareError`. The run labels every latency it reports with the source.

    Thread-safety: none. One thread uses a backend at a time (the TVM backend also sets process-wide
    state: ``TVM_NUM_THREADS``, registered intrinsics); to measure in parallel, build one per process.
    The conformance suite every implementation passes is :mod:`mpsearch.testing.backend_suite`.
    """

    name: ClassVar[str] = "backend"
    #: Labels every latency the backend returns, in the report, ``pareto.csv`` and ``summary.json``.
    latency_source: ClassVar[LatencySource] = MEASURED
    #: The int8 dot instructions of the target's kernels (:func:`~mpsearch.hardware.kernels.dot_isa`; ""
    #: where the backend builds none): the default activation widths depend on it
    #: (:func:`~mpsearch.search.space.activation_bits`).
    dot_isa: str = ""

    @property
    def estimated(self) -> bool:
        """Whether the latencies are estimates (nothing is timed, nothing runs on the device)."""
        return self.latency_source == ESTIMATED

    def close(self) -> None:
        """Stop what the backend started (processes, connections, temporary files). Idempotent."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @abstractmethod
    def cost_table(
        self, prepared: PreparedModel, ranges: Mapping[str, tuple[float, float]], pairs: Sequence[Bits]
    ) -> LayerCostTable:
        """Per-layer, per-pair kernel latencies and weight bytes."""

    @abstractmethod
    def measure(
        self, prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]]
    ) -> Measurement:
        """Compile ``candidate`` end to end and time one inference (batch 1)."""

    def measure_many(
        self, prepared: PreparedModel, candidates: Sequence[Candidate], ranges: Mapping[str, tuple[float, float]],
        fresh: bool = False,
    ) -> list[Measurement]:
        """Measure several candidates; implementations interleave them so drift hits all alike.

        A measurement that raises instead of returning its error is still a value here: one
        candidate's failure never loses the others' timings. ``fresh``: time them now, even where an
        implementation could answer from timings it cached (this one caches none).
        """
        out = []
        for c in candidates:
            try:
                out.append(self.measure(prepared, c, ranges))
            except Exception as e:  # noqa: BLE001 - failures are values (STYLE.md)
                text = str(e).strip()
                out.append(Measurement(error=f"{type(e).__name__}: {text.splitlines()[-1] if text else 'failed'}"))
        return out

    @abstractmethod
    def run(
        self, prepared: PreparedModel, candidate: Candidate, ranges: Mapping[str, tuple[float, float]],
        inputs: np.ndarray | Sequence[np.ndarray],
    ) -> np.ndarray:
        """Compile ``candidate`` and return its outputs for ``inputs``: one array for a one-input model,
        else one per ``prepared.inputs`` (batch first, the declared dtypes:
        :func:`~mpsearch.quant.prepare.input_arrays`)."""

    def describe(self) -> str:
        """One line naming the measured device."""
        return self.name

    def report_notes(self) -> list[str]:
        """Caveats about this backend's numbers for the run report (e.g. how estimates are made)."""
        return []
