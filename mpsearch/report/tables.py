"""The report's input schema and the tables computed from it (compute first; plots and markdown draw these)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mpsearch.candidate import Candidate
from mpsearch.errors import MPSearchError

logger = logging.getLogger(__name__)

#: "pareto": on the searched front; "baseline": uniform or user-given; "ilp": the exact-ILP pick at a budget.
KINDS = ("pareto", "baseline", "ilp")
FP32_LABEL = "fp32"
INT8_LABEL = "int8"

#: Fixed columns of :func:`candidates_frame`, in order; one column per layer follows them.
FRAME_COLUMNS = (
    "label",
    "kind",
    "trial",
    "key",
    "description",
    "proxy",
    "predicted_latency_ms",
    "measured_latency_ms",
    "latency_std_ms",
    "latency_source",
    "prediction_error_pct",
    "weight_bytes",
    "weight_kib",
    "activation_kib",
    "bops_g",
    "accuracy",
    "accuracy_rtn",
    "acc_drop_pts",
    "speedup_vs_fp32",
    "pareto_measured",
)


class ReportError(MPSearchError):
    """The run summary handed to the report is inconsistent (duplicate label, unknown kind, ...)."""


@dataclass
class EvaluatedCandidate:
    """One candidate as evaluated by the pipeline.

    Attributes:
        label: Unique name, e.g. ``"pareto-3"``, ``"fp32"``, ``"int8"``.
        candidate: The per-layer bit assignment.
        kind: ``"pareto"``, ``"ilp"`` or ``"baseline"`` (see :data:`KINDS`).
        proxy: Predicted loss increase (sensitivity proxy); 0 for fp32.
        predicted_latency_ms: Cost-table prediction.
        measured_latency_ms: Measured end-to-end latency, None if not measured.
        latency_std_ms: Standard deviation of the measurement.
        weight_bytes: Size of the quantized weights.
        accuracy: Top-1 accuracy on the test split, in 0..1.
        trial: Optuna trial number, if any.
        activation_bytes: Peak activation memory (TVM's static plan + largest kernel workspace).
        accuracy_rtn: With learned quantization (``search.ptq`` / ``qat_epochs``), the round-to-nearest
            accuracy before it (``accuracy`` is then the learned model's, at the same latency); else None.
    """

    label: str
    candidate: Candidate
    kind: str
    proxy: float
    predicted_latency_ms: float | None
    measured_latency_ms: float | None
    latency_std_ms: float | None
    weight_bytes: int
    accuracy: float | None
    trial: int | None = None
    activation_bytes: int | None = None  # planned peak activation memory (TVM static plan + workspace)
    accuracy_rtn: float | None = None  # round-to-nearest accuracy when ``accuracy`` is after learned PTQ / QAT


@dataclass
class RunSummary:
    """Everything the report shows about one run, as plain data.

    Attributes:
        run_dir: Directory the report files are written into.
        model: Model name.
        hw_profile: Hardware profile name.
        device: Human description of the measured machine (CPU model, cores).
        layers: Quantizable layer names in graph order.
        layer_macs: MACs per layer.
        layer_params: Parameter count per layer.
        candidates: Pareto candidates and baselines.
        layer_latency_ms: Predicted kernel latency, index layer, columns precisions like ``"W8A8"``.
        config: The composed run config as a plain dict.
        timings_s: Wall time per stage in seconds.
        versions: Package versions.
        notes: Caveats printed verbatim in the report.
        sensitivity: Per-layer sensitivity signals, ``{signal name: {layer: value}}`` (e.g.
            ``"hessian_trace"``, ``"activation_trace"``); empty when not computed.
        proxy_validation: Proxy vs measured accuracy drop on random candidates:
            ``{"n": int, "spearman": {estimator: rho}, "points": [{"key", "acc_drop_pts",
            <estimator>: proxy, ...}]}``; None when not run.
        search_fronts: Extra fronts for comparison, ``{name: [{"proxy", "latency_ms", "weight_kib"}, ...]}``
            (e.g. the Optuna front and the exact-ILP front on the proxy); empty when none.
        latency_source: ``"measured"`` (end-to-end latencies timed on the device) or ``"estimated"``
            (roofline from the profile's peak rates, nothing timed); every table and plot says which.
        peers: What a user would run instead, timed beside the pick (``Peers.to_dict()`` of
            :mod:`mpsearch.stages.peers`: ``{"pick", "pick_ms", "pick_accuracy", "device", "threads",
            "skipped", "rows": [{"key", "method", "latency_ms", "accuracy", "error"}, ...]}``); None when
            the run timed none (``peers=false``, or a backend that times nothing).
    """

    run_dir: Path
    model: str
    hw_profile: str
    device: str
    layers: list[str]
    layer_macs: dict[str, int]
    layer_params: dict[str, int]
    candidates: list[EvaluatedCandidate]
    layer_latency_ms: pd.DataFrame | None = None
    config: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sensitivity: dict[str, dict[str, float]] = field(default_factory=dict)
    proxy_validation: dict[str, Any] | None = None
    search_fronts: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    latency_source: str = "measured"
    layer_groups: list[list[str]] = field(default_factory=list)  # layers sharing one precision (2+ members each)
    peers: dict[str, Any] | None = None

    @property
    def estimated(self) -> bool:
        return self.latency_source == "estimated"


def _check(summary: RunSummary) -> None:
    seen: set[str] = set()
    for ev in summary.candidates:
        if ev.label in seen:
            raise ReportError(f"duplicate candidate label {ev.label!r}; labels must be unique")
        seen.add(ev.label)
        if ev.kind not in KINDS:
            raise ReportError(f"candidate {ev.label!r} has kind {ev.kind!r}; use one of {list(KINDS)}")
    clash = [name for name in summary.layers if name in FRAME_COLUMNS]
    if clash:
        raise ReportError(f"layer name {clash[0]!r} clashes with a report column; rename the layer")


def _num(value: float | int | None) -> float:
    return np.nan if value is None else float(value)


def non_dominated(
    accuracy: Sequence[float] | np.ndarray,
    latency: Sequence[float] | np.ndarray,
    memory: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Mask of points not dominated on (accuracy max, latency min[, memory min]).

    A point is dominated when another is at least as good on both axes and strictly better on one.
    Points with a NaN coordinate are never on the front and dominate nothing.

    Args:
        accuracy: Accuracy per point (higher is better).
        latency: Latency per point (lower is better).
        memory: Optional third axis, e.g. weight bytes (lower is better).

    Returns:
        Boolean array, True for non-dominated points.
    """
    acc = np.asarray(accuracy, dtype=float)
    lat = np.asarray(latency, dtype=float)
    if acc.shape != lat.shape or acc.ndim != 1:
        raise ReportError(f"accuracy and latency must be 1-D and equally long, got {acc.shape} and {lat.shape}")
    mem = np.zeros_like(acc) if memory is None else np.asarray(memory, dtype=float)
    valid = np.isfinite(acc) & np.isfinite(lat) & np.isfinite(mem)
    a, t, m = acc[valid], lat[valid], mem[valid]
    # Row i, column j: does point j dominate point i?
    no_worse = (a[None, :] >= a[:, None]) & (t[None, :] <= t[:, None]) & (m[None, :] <= m[:, None])
    better = (a[None, :] > a[:, None]) | (t[None, :] < t[:, None]) | (m[None, :] < m[:, None])
    out = np.zeros(acc.shape, dtype=bool)
    out[valid] = ~(no_worse & better).any(axis=1)
    return out


def _find(frame: pd.DataFrame, label: str) -> pd.Series | None:
    rows = frame[frame["label"].str.lower() == label]
    return None if rows.empty else rows.iloc[0]


def _latency_sorted(frame: pd.DataFrame) -> pd.DataFrame:
    """Sort by measured latency, then predicted; unmeasured rows go last, ordered by prediction."""
    return frame.sort_values(
        ["measured_latency_ms", "predicted_latency_ms"], na_position="last", kind="mergesort"
    )


def candidates_frame(summary: RunSummary) -> pd.DataFrame:
    """One row per candidate: metrics, derived comparisons and one ``"W{w}A{a}"`` column per layer.

    Pareto rows come first, sorted by latency (measured, then predicted), then the exact-ILP picks
    (same order), then the baselines in input order. ``acc_drop_pts`` and ``speedup_vs_fp32`` compare with
    the baseline labelled ``"fp32"`` and are NaN without it; ``pareto_measured`` marks pareto rows
    non-dominated on (accuracy, measured latency, weight bytes).

    Args:
        summary: The run summary.

    Returns:
        The candidates table, columns :data:`FRAME_COLUMNS` then ``summary.layers``.
    """
    _check(summary)
    records = []
    for ev in summary.candidates:
        pred, meas = _num(ev.predicted_latency_ms), _num(ev.measured_latency_ms)
        rec: dict[str, Any] = {
            "label": ev.label,
            "kind": ev.kind,
            "trial": ev.trial,
            "key": ev.candidate.key(),
            "description": ev.candidate.describe(),
            "proxy": float(ev.proxy),
            "predicted_latency_ms": pred,
            "measured_latency_ms": meas,
            "latency_std_ms": _num(ev.latency_std_ms),
            # an estimated "measurement" is the prediction itself: there is no error to report
            "latency_source": summary.latency_source if np.isfinite(meas) else None,
            "prediction_error_pct": 100.0 * (pred - meas) / meas
            if np.isfinite(meas) and meas > 0 and not summary.estimated else np.nan,
            "weight_bytes": int(ev.weight_bytes),
            "weight_kib": ev.weight_bytes / 1024.0,
            "activation_kib": _num(ev.activation_bytes) / 1024.0,
            # giga bit-operations: sum of MACs x w_bits x a_bits (NaN where a layer's MACs are unknown)
            "bops_g": sum(_num(summary.layer_macs.get(n)) * w * a for n, (w, a) in ev.candidate.items()) / 1e9,
            "accuracy": _num(ev.accuracy),
            "accuracy_rtn": _num(ev.accuracy_rtn),
        }
        for name in summary.layers:
            bits = ev.candidate.get(name)
            rec[name] = None if bits is None else f"W{bits[0]}A{bits[1]}"
        records.append(rec)

    layer_cols = list(summary.layers)
    fixed = [c for c in FRAME_COLUMNS if c not in ("acc_drop_pts", "speedup_vs_fp32", "pareto_measured")]
    frame = pd.DataFrame.from_records(records, columns=fixed + layer_cols)
    frame["trial"] = frame["trial"].astype("Int64")

    fp32 = _find(frame, FP32_LABEL)
    if fp32 is None:
        logger.warning("no %r baseline; accuracy drop and speedup are left empty", FP32_LABEL)
        frame["acc_drop_pts"] = np.nan
        frame["speedup_vs_fp32"] = np.nan
    else:
        frame["acc_drop_pts"] = 100.0 * (fp32["accuracy"] - frame["accuracy"])
        frame["speedup_vs_fp32"] = fp32["measured_latency_ms"] / frame["measured_latency_ms"]

    is_pareto = (frame["kind"] == "pareto").to_numpy()
    front = np.zeros(len(frame), dtype=bool)
    front[is_pareto] = non_dominated(
        frame.loc[is_pareto, "accuracy"].to_numpy(), frame.loc[is_pareto, "measured_latency_ms"].to_numpy(),
        frame.loc[is_pareto, "weight_bytes"].to_numpy(),
    )
    frame["pareto_measured"] = front

    is_ilp = (frame["kind"] == "ilp").to_numpy()
    ordered = pd.concat(
        [_latency_sorted(frame[is_pareto]), _latency_sorted(frame[is_ilp]), frame[~is_pareto & ~is_ilp]]
    )
    return ordered[list(FRAME_COLUMNS) + layer_cols].reset_index(drop=True)


def group_tags(groups: Sequence[Sequence[str]]) -> dict[str, str]:
    """``{layer: "g1", ...}`` for the members of each layer group (layers sharing one precision)."""
    return {n: f"g{i}" for i, g in enumerate(groups, 1) for n in g}


def bits_frame(summary: RunSummary) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-layer weight and activation bits along the front.

    Args:
        summary: The run summary.

    Returns:
        ``(weight_bits, activation_bits)``: index the pareto labels sorted by latency (measured,
        then predicted), columns the layers in graph order. Integers; float with NaN where a
        candidate lacks a layer.
    """
    _check(summary)
    evs = [ev for ev in summary.candidates if ev.kind == "pareto"]
    order = _latency_sorted(
        pd.DataFrame(
            {
                "measured_latency_ms": [_num(ev.measured_latency_ms) for ev in evs],
                "predicted_latency_ms": [_num(ev.predicted_latency_ms) for ev in evs],
            }
        )
    ).index
    evs = [evs[i] for i in order]
    labels = pd.Index([ev.label for ev in evs], name="label")
    columns = pd.Index(list(summary.layers), name="layer")

    def table(which: int) -> pd.DataFrame:
        data = [[_num(ev.candidate[n][which]) if n in ev.candidate else np.nan for n in columns] for ev in evs]
        out = pd.DataFrame(data, index=labels, columns=columns, dtype=float)
        return out if out.isna().to_numpy().any() else out.astype(int)

    return table(0), table(1)


def pareto_points(frame: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """The points ``pareto.png`` draws, computed from :func:`candidates_frame`.

    Uses measured latency when any pareto row has it (with accuracy); otherwise falls back to the
    cost-table prediction and recomputes the front on it. Rows lacking latency or accuracy are dropped.

    Args:
        frame: Output of :func:`candidates_frame`.

    Returns:
        ``(points, measured)``: points has columns label, kind, latency_ms, latency_std_ms,
        accuracy_pct, on_front; ``measured`` says which latency was used.
    """
    pareto = (frame["kind"] == "pareto").to_numpy()
    has_acc = frame["accuracy"].notna().to_numpy()
    measured = bool((pareto & has_acc & frame["measured_latency_ms"].notna().to_numpy()).any())
    lat = frame["measured_latency_ms" if measured else "predicted_latency_ms"].to_numpy(dtype=float)
    # The plot is accuracy vs latency, so its highlighted front is the 2-D one.
    on_front = np.zeros(len(frame), dtype=bool)
    on_front[pareto] = non_dominated(frame["accuracy"].to_numpy(dtype=float)[pareto], lat[pareto])
    points = pd.DataFrame(
        {
            "label": frame["label"].to_numpy(),
            "kind": frame["kind"].to_numpy(),
            "latency_ms": lat,
            "latency_std_ms": frame["latency_std_ms"].to_numpy(dtype=float) if measured else np.nan,
            "accuracy_pct": 100.0 * frame["accuracy"].to_numpy(dtype=float),
            "on_front": on_front,
        }
    )
    keep = points["latency_ms"].notna() & points["accuracy_pct"].notna()
    dropped = points.loc[~keep, "label"].tolist()
    if dropped:
        which = "measured" if measured else "predicted"
        logger.warning("not plotted (no %s latency or accuracy): %s", which, dropped)
    return points[keep].reset_index(drop=True), measured


def memory_points(frame: pd.DataFrame) -> pd.DataFrame:
    """The points ``memory.png`` draws: accuracy versus weight memory, from :func:`candidates_frame`.

    Args:
        frame: Output of :func:`candidates_frame`.

    Returns:
        Columns label, kind, weight_kib, accuracy_pct, on_front (pareto rows non-dominated on accuracy
        and weight memory); rows without accuracy are dropped.
    """
    pareto = (frame["kind"] == "pareto").to_numpy()
    kib = frame["weight_kib"].to_numpy(dtype=float)
    on_front = np.zeros(len(frame), dtype=bool)
    on_front[pareto] = non_dominated(frame["accuracy"].to_numpy(dtype=float)[pareto], kib[pareto])
    points = pd.DataFrame(
        {
            "label": frame["label"].to_numpy(),
            "kind": frame["kind"].to_numpy(),
            "weight_kib": kib,
            "accuracy_pct": 100.0 * frame["accuracy"].to_numpy(dtype=float),
            "on_front": on_front,
        }
    )
    return points[points["accuracy_pct"].notna()].reset_index(drop=True)


def prediction_points(frame: pd.DataFrame) -> pd.DataFrame:
    """Cost-model check: candidates with both a predicted and a measured latency.

    Args:
        frame: Output of :func:`candidates_frame`.

    Returns:
        Columns label, kind, predicted_ms, measured_ms, error_pct ((predicted − measured) / measured);
        empty for an estimated run (its "measured" latency is the roofline estimate itself).
    """
    keep = frame["predicted_latency_ms"].notna() & frame["measured_latency_ms"].notna()
    if "latency_source" in frame.columns:  # an estimate checked against itself is no check
        keep &= frame["latency_source"] != "estimated"
    sub = frame[keep]
    return pd.DataFrame(
        {
            "label": sub["label"].to_numpy(),
            "kind": sub["kind"].to_numpy(),
            "predicted_ms": sub["predicted_latency_ms"].to_numpy(dtype=float),
            "measured_ms": sub["measured_latency_ms"].to_numpy(dtype=float),
            "error_pct": sub["prediction_error_pct"].to_numpy(dtype=float),
        }
    )


def prediction_stats(points: pd.DataFrame) -> dict[str, float]:
    """``n``, ``median_abs_pct``, ``mean_abs_pct`` (MAPE) and ``max_abs_pct`` of :func:`prediction_points`."""
    err = points["error_pct"].abs().to_numpy(dtype=float)
    err = err[np.isfinite(err)]
    if err.size == 0:
        return {"n": 0, "median_abs_pct": np.nan, "mean_abs_pct": np.nan, "max_abs_pct": np.nan}
    return {
        "n": int(err.size),
        "median_abs_pct": float(np.median(err)),
        "mean_abs_pct": float(err.mean()),
        "max_abs_pct": float(err.max()),
    }


def sensitivity_frame(summary: RunSummary) -> pd.DataFrame:
    """Per-layer sensitivity signals: index the layers in graph order, one column per signal.

    Layers a signal does not name are NaN; signal names unknown to ``summary.layers`` are kept at the
    end. Empty (no columns) when the run recorded no sensitivity.
    """
    signals = {name: values for name, values in summary.sensitivity.items() if values}
    extra = [n for vals in signals.values() for n in vals if n not in summary.layers]
    index = pd.Index(list(summary.layers) + list(dict.fromkeys(extra)), name="layer")
    data = {
        name: [np.nan if vals.get(n) is None else float(vals[n]) for n in index] for name, vals in signals.items()
    }
    return pd.DataFrame(data, index=index, dtype=float)


@dataclass
class ProxyValidation:
    """Proxy versus measured accuracy drop, from :attr:`RunSummary.proxy_validation`.

    Attributes:
        points: One row per sampled candidate: ``acc_drop_pts`` and one column per estimator.
        estimators: Estimator names, in the order of ``spearman`` then of the points' columns.
        spearman: Spearman rank correlation per estimator (stored by the run; computed here only where
            the run did not store it).
        n: Number of candidates the run evaluated.
        seconds: Wall time of each estimator, where the run stored it (``"estimator_seconds"``).
    """

    points: pd.DataFrame
    estimators: list[str]
    spearman: dict[str, float]
    n: int
    seconds: dict[str, float] = field(default_factory=dict)


def proxy_validation_table(summary: RunSummary) -> ProxyValidation | None:
    """Tabulate :attr:`RunSummary.proxy_validation`; None when the run did not validate its proxy."""
    pv = summary.proxy_validation
    if not pv or not pv.get("points"):
        return None
    points = pd.DataFrame.from_records(list(pv["points"]))
    if "acc_drop_pts" not in points.columns:
        raise ReportError("proxy_validation points lack 'acc_drop_pts'; store the measured accuracy drop")
    stored = {str(k): (np.nan if v is None else float(v)) for k, v in (pv.get("spearman") or {}).items()}
    candidates = list(stored) + [c for c in points.columns if c not in stored]
    estimators = [c for c in candidates if c in points.columns and c not in ("key", "acc_drop_pts", "label")]
    for col in ["acc_drop_pts", *estimators]:
        points[col] = pd.to_numeric(points[col], errors="coerce").astype(float)
    spearman = {}
    for name in estimators:
        if name in stored:
            spearman[name] = stored[name]
        else:
            # Spearman's rho is Pearson's r of the ranks (ties averaged); pandas' method="spearman" would
            # import scipy.stats just for this.
            ranks = points[[name, "acc_drop_pts"]].dropna().rank()
            spearman[name] = float(ranks[name].corr(ranks["acc_drop_pts"])) if len(ranks) > 2 else np.nan
    seconds = {str(k): float(v) for k, v in (pv.get("estimator_seconds") or {}).items() if v is not None}
    return ProxyValidation(points, estimators, spearman, int(pv.get("n") or len(points)), seconds)


def fronts_frame(summary: RunSummary) -> pd.DataFrame:
    """The comparison fronts as one long table: columns front, proxy, latency_ms, weight_kib.

    Rows are sorted by front (input order), then latency; empty when the run stored no fronts.
    """
    frames = []
    for name, points in summary.search_fronts.items():
        if not points:
            continue
        part = pd.DataFrame.from_records(list(points)).reindex(columns=["proxy", "latency_ms", "weight_kib"])
        part = part.apply(pd.to_numeric, errors="coerce").astype(float)
        part.insert(0, "front", name)
        frames.append(part.sort_values(["latency_ms", "proxy"], kind="mergesort"))
    if not frames:
        return pd.DataFrame(columns=["front", "proxy", "latency_ms", "weight_kib"])
    return pd.concat(frames, ignore_index=True)


#: Accuracy tolerances (points below the reference) the recommendation answers "fastest within" for.
FASTEST_WITHIN_PTS: tuple[float, ...] = (0.5, 1.0, 2.0)
#: ... and "smallest within" for.
SMALLEST_WITHIN_PTS: tuple[float, ...] = (0.5, 1.0)
#: The tolerance of the headline recommendation.
HEADLINE_PTS = 1.0
#: Latencies within this fraction of each other count as equal when picking "fastest" and judging
#: domination: below what end-to-end timing resolves (a shared 2-core VM varies by more between repeats),
#: so a 0.03% edge never buys half a point of accuracy.
LATENCY_TIE = 0.02


@dataclass
class Recommendation:
    """Which evaluated candidate to deploy for which goal, computed from :func:`candidates_frame`.

    Attributes:
        table: One row per goal: goal, label, kind, description, accuracy_pct, acc_drop_pts, latency_ms,
            weight_kib, speedup_vs_fp32; label None (and the metrics NaN) where no candidate meets the goal.
        headline: Index into ``table`` of the goal the report leads with (fastest within
            :data:`HEADLINE_PTS` of the reference), or None when nothing qualifies.
        reference: ``"FP32"`` when tolerances are measured from the FP32 baseline, else ``"the most accurate
            candidate"`` (a run without an FP32 baseline).
        reference_accuracy_pct: The accuracy the tolerances are measured from.
        latency: ``"measured"``, ``"estimated"`` or ``"predicted"``: which latency the goals rank by.
        dominating: Labels of baselines (uniform INT8, FP32, a given candidate) that dominate every Pareto
            candidate with an accuracy and a latency: at least as accurate and at least as fast as each
            (latencies within :data:`LATENCY_TIE` tie), and strictly better on one of the two. The searched
            front then adds nothing on those two axes.
        front_size: Pareto candidates with both an accuracy and a latency (what ``dominating`` compares with).
        front_accuracy_pct: (lowest, highest) accuracy on the front: the Pareto candidates non-dominated on
            accuracy, latency and weight memory (``pareto_measured``; all of them when nothing was measured).
        front_latency_ms: (lowest, highest) latency on that front.
        front_weight_kib: (lowest, highest) weight memory on that front.
        front_2d_accuracy_pct, front_2d_latency_ms: the same spans over the front's candidates that no other
            one dominates on accuracy and latency alone (weight memory left out; latencies within
            :data:`LATENCY_TIE` tie): where they are narrower, candidates are on the front only for their
            smaller weights.
        weight_kib: Weight memory of each dominating baseline.
        front_min_weight_kib: The smallest weight memory among the Pareto candidates compared with.
    """

    table: pd.DataFrame
    headline: int | None
    reference: str
    reference_accuracy_pct: float
    latency: str
    dominating: list[str] = field(default_factory=list)
    front_size: int = 0
    front_accuracy_pct: tuple[float, float] | None = None
    front_latency_ms: tuple[float, float] | None = None
    weight_kib: dict[str, float] = field(default_factory=dict)
    front_min_weight_kib: float | None = None
    front_weight_kib: tuple[float, float] | None = None
    front_2d_accuracy_pct: tuple[float, float] | None = None
    front_2d_latency_ms: tuple[float, float] | None = None

    def row(self, goal: str) -> pd.Series:
        """The table row of ``goal`` (e.g. ``"fastest within 1 point of FP32"``)."""
        rows = self.table[self.table["goal"] == goal]
        if rows.empty:
            raise ReportError(f"no recommendation goal {goal!r}; goals: {list(self.table['goal'])}")
        return rows.iloc[0]


def _pts(tol: float) -> str:
    return f"{tol:g} point" + ("" if tol == 1 else "s")


def _dominates(b: pd.Series, p: pd.Series) -> bool:
    """At least as accurate and as fast (latency within :data:`LATENCY_TIE` is a tie), strictly better on one."""
    as_fast = b["latency_ms"] <= p["latency_ms"] * (1 + LATENCY_TIE)
    faster = b["latency_ms"] * (1 + LATENCY_TIE) < p["latency_ms"]
    no_worse = b["accuracy_pct"] >= p["accuracy_pct"] and as_fast
    return bool(no_worse and (b["accuracy_pct"] > p["accuracy_pct"] or faster))


def recommend(
    frame: pd.DataFrame,
    fastest_within: Sequence[float] = FASTEST_WITHIN_PTS,
    smallest_within: Sequence[float] = SMALLEST_WITHIN_PTS,
    latency_budget_ms: float | None = None,
    weight_budget_kib: float | None = None,
) -> Recommendation | None:
    """Pick a candidate per goal from every evaluated one (Pareto, exact-ILP picks and baselines alike).

    Goals: the most accurate; the fastest within each of ``fastest_within`` accuracy points of FP32; the
    smallest (weight memory) within each of ``smallest_within``; with a run budget, the most accurate
    candidate that meets it on the measured values. Ties go to the faster, then the smaller, then the
    more accurate candidate; for "fastest", latencies within :data:`LATENCY_TIE` of the fastest tie, and the
    most accurate of those wins. Latency is the measured one (or the roofline estimate of an estimated run);
    when no candidate was measured, the cost-table prediction.

    Args:
        frame: Output of :func:`candidates_frame`.
        fastest_within: Accuracy tolerances, in points below the reference, for "fastest within".
        smallest_within: Tolerances for "smallest within".
        latency_budget_ms: The run's latency budget, if any.
        weight_budget_kib: The run's weight-memory budget, if any.

    Returns:
        The recommendation, or None when no candidate has an accuracy and a latency.
    """
    measured = bool(frame["measured_latency_ms"].notna().any())
    lat_col = "measured_latency_ms" if measured else "predicted_latency_ms"
    source = "predicted"
    if measured:
        estimated = "latency_source" in frame.columns and bool((frame["latency_source"] == "estimated").any())
        source = "estimated" if estimated else "measured"
    pts = pd.DataFrame({
        "label": frame["label"], "kind": frame["kind"], "description": frame["description"],
        "accuracy_pct": 100.0 * frame["accuracy"].astype(float), "latency_ms": frame[lat_col].astype(float),
        "weight_kib": frame["weight_kib"].astype(float), "speedup_vs_fp32": frame["speedup_vs_fp32"].astype(float),
    })
    on_front = frame["pareto_measured"].astype(bool) if measured else frame["kind"] == "pareto"
    pts = pts[pts["accuracy_pct"].notna() & pts["latency_ms"].notna()]
    if pts.empty:
        return None
    fp32 = pts[pts["label"].str.lower() == FP32_LABEL]
    if fp32.empty:
        reference, ref_acc = "the most accurate candidate", float(pts["accuracy_pct"].max())
    else:
        reference, ref_acc = "FP32", float(fp32["accuracy_pct"].iloc[0])
    pts = pts.assign(acc_drop_pts=ref_acc - pts["accuracy_pct"])

    def best(pool: pd.DataFrame, order: list[str], ascending: list[bool]) -> pd.Series | None:
        if pool.empty:
            return None
        return pool.sort_values(order, ascending=ascending, kind="mergesort").iloc[0]

    def fastest(pool: pd.DataFrame) -> pd.Series | None:
        if pool.empty:
            return None
        ties = pool[pool["latency_ms"] <= pool["latency_ms"].min() * (1 + LATENCY_TIE)]
        return best(ties, ["accuracy_pct", "latency_ms", "weight_kib"], [False, True, True])

    size = (["weight_kib", "latency_ms", "accuracy_pct"], [True, True, False])
    accurate = (["accuracy_pct", "latency_ms", "weight_kib"], [False, True, True])
    goals: list[tuple[str, pd.Series | None]] = [("most accurate", best(pts, *accurate))]
    # A hair of slack so that "within 1 point" keeps a candidate exactly 1.00 point below after float rounding.
    within = {t: pts[pts["acc_drop_pts"] <= t + 1e-9] for t in {*fastest_within, *smallest_within}}
    for t in fastest_within:
        goals.append((f"fastest within {_pts(t)} of {reference}", fastest(within[t])))
    lead = HEADLINE_PTS if HEADLINE_PTS in fastest_within else next(iter(fastest_within), None)
    headline_goal = None if lead is None else f"fastest within {_pts(lead)} of {reference}"
    for t in smallest_within:
        goals.append((f"smallest within {_pts(t)} of {reference}", best(within[t], *size)))
    if latency_budget_ms is not None or weight_budget_kib is not None:
        ok = pts
        parts = []
        if latency_budget_ms is not None:
            ok = ok[ok["latency_ms"] <= latency_budget_ms]
            parts.append(f"≤ {latency_budget_ms:g} ms")
        if weight_budget_kib is not None:
            ok = ok[ok["weight_kib"] <= weight_budget_kib]
            parts.append(f"≤ {weight_budget_kib:g} KiB of weights")
        goals.append(("most accurate within the run's budget (" + ", ".join(parts) + ")", best(ok, *accurate)))

    columns = ["label", "kind", "description", "accuracy_pct", "acc_drop_pts", "latency_ms", "weight_kib",
               "speedup_vs_fp32"]
    records = [{"goal": g, **({c: r[c] for c in columns} if r is not None else dict.fromkeys(columns))}
               for g, r in goals]
    table = pd.DataFrame.from_records(records, columns=["goal", *columns])
    for c in columns[3:]:
        table[c] = table[c].astype(float)
    headline = None
    if headline_goal is not None:
        i = int(np.flatnonzero(table["goal"].to_numpy() == headline_goal)[0])
        headline = None if pd.isna(table.at[i, "label"]) else i

    front = pts[pts["kind"] == "pareto"]
    dominating = [] if front.empty else [
        str(b["label"]) for _, b in pts[pts["kind"] == "baseline"].iterrows()
        if all(_dominates(b, p) for _, p in front.iterrows())
    ]
    measured_front = pts[(pts["kind"] == "pareto") & on_front.reindex(pts.index).to_numpy()]
    spans = _spans(measured_front, ("accuracy_pct", "latency_ms", "weight_kib"))
    two_d = measured_front[[not any(_dominates(q, r) for _, q in measured_front.iterrows())
                            for _, r in measured_front.iterrows()]]  # latencies within LATENCY_TIE tie
    spans_2d = _spans(two_d, ("accuracy_pct", "latency_ms"))
    weights = {str(b["label"]): float(b["weight_kib"]) for _, b in pts.iterrows() if str(b["label"]) in dominating}
    return Recommendation(table, headline, reference, ref_acc, source, dominating, len(front),
                          spans["accuracy_pct"], spans["latency_ms"], weights,
                          float(front["weight_kib"].min()) if not front.empty else None,
                          spans["weight_kib"], spans_2d["accuracy_pct"], spans_2d["latency_ms"])


def _spans(points: pd.DataFrame, columns: tuple[str, ...]) -> dict[str, tuple[float, float] | None]:
    """(lowest, highest) of each column over ``points`` (None for each when there are none)."""
    if points.empty:
        return dict.fromkeys(columns)
    return {c: (float(points[c].min()), float(points[c].max())) for c in columns}
