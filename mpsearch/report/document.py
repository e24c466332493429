"""The report's content as a list of plain blocks, rendered alike to ``report.md`` and ``report.html``.

One builder decides what the report says; the two renderers only format it, so the markdown and the
HTML never disagree. Paragraph and cell text may use three inline markdown marks: ``**bold**``,
``*emphasis*`` and ```code```.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import yaml

from mpsearch.report.store import to_plain
from mpsearch.report.tables import (
    FP32_LABEL,
    INT8_LABEL,
    Recommendation,
    RunSummary,
    bits_frame,
    candidates_frame,
    fronts_frame,
    group_tags,
    memory_points,
    prediction_points,
    prediction_stats,
    proxy_validation_table,
    recommend,
    sensitivity_frame,
)

MISSING = "–"

#: Plot files a report may hold, with their alt text, in the order the report shows them.
FIGURES: dict[str, str] = {
    "pareto.png": "Accuracy versus latency",
    "memory.png": "Accuracy versus weight memory",
    "bits.png": "Bit-widths along the front",
    "sensitivity.png": "Sensitivity per layer",
    "prediction.png": "Cost model: predicted versus measured latency",
    "proxy.png": "Proxy versus measured accuracy drop",
    "fronts.png": "Search fronts: proxy versus predicted latency",
}


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    """Cells are formatted by :func:`cell_text`; ``align`` holds ``"l"``/``"r"`` per column."""

    header: list[str]
    rows: list[list[object]]
    align: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Image:
    file: str
    alt: str


@dataclass(frozen=True)
class Code:
    text: str
    lang: str = ""


Block = Heading | Paragraph | Bullets | Table | Image | Code


_MARKS = re.compile(r"\*\*|\*|`")


def plain_text(text: str) -> str:
    """``text`` without its inline markdown marks (the console's form of a report sentence)."""
    return _MARKS.sub("", text)


def is_missing(value: object) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def cell_text(value: object) -> str:
    """None/NaN print as ``–``, floats as ``.4g``, True as ``yes`` (False empty), the rest as ``str``."""
    if is_missing(value):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value).replace("\n", " ")


def _f(value: object, spec: str) -> str:
    return MISSING if is_missing(value) else format(float(value), spec)  # type: ignore[arg-type]


def _latency(row: pd.Series) -> str:
    mean, std = row["measured_latency_ms"], row["latency_std_ms"]
    if is_missing(mean):
        return MISSING
    if row.get("latency_source") == "estimated":  # a roofline estimate has no spread
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {std:.3f}" if not is_missing(std) else f"{mean:.3f}"


def frame_table(frame: pd.DataFrame, floatfmt: str = ".4g", index: bool = True) -> Table:
    """A DataFrame as a :class:`Table`; numeric columns right-aligned, floats formatted with ``floatfmt``."""
    header = ([str(frame.index.name or "")] if index else []) + [str(c) for c in frame.columns]
    align = (["l"] if index else []) + [
        "r" if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) else "l"
        for c in frame.columns
    ]

    def fmt(v: object) -> object:
        if isinstance(v, (float, np.floating)) and not is_missing(v):
            return format(float(v), floatfmt)
        return v

    rows = [
        ([idx] if index else []) + [fmt(v) for v in values]
        for idx, values in zip(frame.index, frame.itertuples(index=False, name=None))
    ]
    return Table(header, rows, align)


def available_figures(summary: RunSummary, frame: pd.DataFrame | None = None) -> list[str]:
    """The plot files that have data to draw, in :data:`FIGURES` order.

    ``pareto.png`` and ``bits.png`` are always drawn (they say so on the image when empty).
    """
    frame = candidates_frame(summary) if frame is None else frame
    have = {"pareto.png", "bits.png"}
    if not memory_points(frame).empty:
        have.add("memory.png")
    if sensitivity_frame(summary).shape[1]:
        have.add("sensitivity.png")
    if not prediction_points(frame).empty:
        have.add("prediction.png")
    if proxy_validation_table(summary) is not None:
        have.add("proxy.png")
    if not fronts_frame(summary).dropna(subset=["proxy", "latency_ms"]).empty:
        have.add("fronts.png")
    return [f for f in FIGURES if f in have]


def _image(file: str, figures: Collection[str], missing: str) -> Block:
    return Image(file, FIGURES[file]) if file in figures else Paragraph(missing)


def _measured_header(estimated: bool) -> str:
    return "estimated (ms, roofline)" if estimated else "measured (ms)"


def _baselines(frame: pd.DataFrame, estimated: bool = False) -> list[Block]:
    base = frame[frame["kind"] == "baseline"]
    if base.empty:
        return [Paragraph("No baselines were evaluated.")]
    rows = [
        [
            baseline_name(r["label"]),
            r["description"],
            _f(100 * r["accuracy"], ".2f"),
            _latency(r),
            _f(r["predicted_latency_ms"], ".3f"),
            _f(r["weight_kib"], ".1f"),
            _f(r["speedup_vs_fp32"], ".2f"),
        ]
        for _, r in base.iterrows()
    ]
    header = ["baseline", "bits", "accuracy (%)", _measured_header(estimated), "predicted (ms)", "weights (KiB)",
              "speedup"]
    return [Table(header, rows, ["l", "l", "r", "r", "r", "r", "r"])]


def _candidate_rows(rows: pd.DataFrame, with_front: bool, estimated: bool = False) -> Table:
    out = [
        [
            r["label"],
            r["trial"],
            r["description"],
            _f(r["proxy"], ".4g"),
            _f(r["predicted_latency_ms"], ".3f"),
            _latency(r),
            _f(r["prediction_error_pct"], "+.1f"),
            _f(r["weight_kib"], ".1f"),
            _f(r["bops_g"], ".4g"),
            _f(100 * r["accuracy"], ".2f"),
            _f(r["acc_drop_pts"], "+.2f"),
            _f(r["speedup_vs_fp32"], ".2f"),
        ]
        + ([bool(r["pareto_measured"])] if with_front else [])
        for _, r in rows.iterrows()
    ]
    header = [
        "label", "trial", "bits", "proxy", "predicted (ms)", _measured_header(estimated), "pred. error (%)",
        "weights (KiB)", "GBOPs", "accuracy (%)", "acc. drop (pts)", "speedup",
    ] + ([("estimated" if estimated else "measured") + " front"] if with_front else [])
    return Table(header, out, ["l", "r", "l"] + ["r"] * 9 + (["l"] if with_front else []))


def _pareto(frame: pd.DataFrame, figures: Collection[str], estimated: bool = False) -> list[Block]:
    front = frame[frame["kind"] == "pareto"]
    out: list[Block] = []
    if front.empty:
        out.append(Paragraph("The search returned no Pareto candidates."))
    elif estimated:
        out += [
            Paragraph(
                "Sorted by latency. **Latencies are estimated (roofline from the profile's peak rates), not "
                "measured.** *acc. drop* is FP32 accuracy minus the candidate's, in percentage points; "
                "*estimated front* marks candidates no other Pareto candidate beats on estimated latency, "
                "accuracy and weight memory at once."
            ),
            _candidate_rows(front, with_front=True, estimated=True),
        ]
    else:
        out += [
            Paragraph(
                "Sorted by latency. *acc. drop* is FP32 accuracy minus the candidate's, in percentage points; "
                "*pred. error* is (predicted − measured) / measured; *measured front* marks candidates no other "
                "Pareto candidate beats on measured latency, accuracy and weight memory at once."
            ),
            _candidate_rows(front, with_front=True),
        ]
    out.append(_image("pareto.png", figures, "No candidate has both a latency and an accuracy to plot."))
    out.append(_image("memory.png", figures, "No candidate has an accuracy: there is no memory plot."))
    return out


def baseline_name(label: str) -> str:
    """``"FP32"`` / ``"uniform INT8"`` for the built-in baselines, the label otherwise."""
    return {FP32_LABEL: "FP32", INT8_LABEL: "uniform INT8"}.get(label.lower(), label)


def summary_recommendation(summary: RunSummary, frame: pd.DataFrame | None = None) -> Recommendation | None:
    """:func:`~mpsearch.report.tables.recommend` on the summary, with the run's own budgets as one more goal."""
    frame = candidates_frame(summary) if frame is None else frame
    budget = summary.config.get("budget") or {} if isinstance(summary.config, dict) else {}
    lat, kib = budget.get("latency_ms"), budget.get("weight_kib")
    return recommend(frame, latency_budget_ms=None if lat is None else float(lat),
                     weight_budget_kib=None if kib is None else float(kib))


def _pick_text(r: pd.Series, latency: str) -> str:
    name = baseline_name(str(r["label"])) if r["kind"] == "baseline" else str(r["label"])
    speed = "" if is_missing(r["speedup_vs_fp32"]) else f", {r['speedup_vs_fp32']:.2f}× FP32's speed"
    est = "" if latency == "measured" else f" {latency}"
    return (f"**{name}** ({r['latency_ms']:.3f} ms{est}, {r['accuracy_pct']:.2f}% top-1, "
            f"{r['weight_kib']:.1f} KiB of weights{speed})")


def _vs_reference(drop: float, reference: str) -> str:
    if abs(drop) < 0.005:
        return f"as accurate as {reference}"
    return f"{abs(drop):.2f} points {'below' if drop > 0 else 'above'} {reference}"


def recommendation_sentences(rec: Recommendation | None) -> list[str]:
    """The recommendation in words: the headline pick, then the dominance note when a baseline wins.

    Shared by the report and the console summary so they never disagree.
    """
    if rec is None:
        return ["No candidate has both an accuracy and a latency: there is nothing to recommend."]
    out: list[str] = []
    t = rec.table
    if rec.headline is not None:
        r = t.iloc[rec.headline]
        out.append(f"Recommended: {_pick_text(r, rec.latency)}, the {r['goal']} "
                   f"({_vs_reference(r['acc_drop_pts'], rec.reference)}).")
    else:
        out.append("No evaluated candidate is within the headline tolerance of " + rec.reference
                   + "; see the table for the other goals.")
    if rec.front_accuracy_pct is not None and rec.front_latency_ms is not None:
        (a_lo, a_hi), (t_lo, t_hi) = rec.front_accuracy_pct, rec.front_latency_ms
        if a_lo == a_hi and t_lo == t_hi:
            out.append(f"The {rec.latency} front is a single point ({a_hi:.2f}%, {t_lo:.3f} ms): the most accurate "
                       "Pareto candidate evaluated is also the fastest.")
        else:
            memory = ""
            if rec.front_weight_kib is not None and rec.front_weight_kib[0] > 0:
                w_lo, w_hi = rec.front_weight_kib
                memory = f" and {w_hi / w_lo:.1f}× in weight memory ({w_lo:.1f}–{w_hi:.1f} KiB)"
            out.append(f"The {rec.latency} front spans {a_hi - a_lo:.2f} points of accuracy "
                       f"({a_lo:.2f}–{a_hi:.2f}%), "
                       f"{t_hi / t_lo:.1f}× in latency ({t_lo:.3f}–{t_hi:.3f} ms){memory}"
                       + (": bits barely matter for accuracy here." if a_hi - a_lo < 0.5 else "."))
            two_d = _front_2d_text(rec)
            if two_d:
                out.append(two_d)
    for label in rec.dominating:
        name, kib, smallest = baseline_name(label), rec.weight_kib.get(label), rec.front_min_weight_kib
        if kib is not None and smallest is not None and smallest < kib:
            memory = (f" unless weight memory matters more: the smallest Pareto candidate has {smallest:.1f} KiB of "
                      f"weights against its {kib:.1f} KiB")
        else:
            memory = ", which is no larger in weights either"
        out.append(
            f"**{name[:1].upper() + name[1:]} dominates the searched front**: it is at least as accurate and at "
            "least as fast "
            f"({rec.latency} latency) as every one of the {rec.front_size} Pareto candidates evaluated, so on "
            f"accuracy and latency the search found nothing better than this baseline. Deploy {name}{memory}.")
    return out


def _front_2d_text(rec: Recommendation) -> str:
    """A sentence for a front that is wider with weight memory than on accuracy and latency alone ("" if not)."""
    if rec.front_2d_accuracy_pct is None or rec.front_2d_latency_ms is None:
        return ""
    (a_lo, a_hi), (t_lo, t_hi) = rec.front_2d_accuracy_pct, rec.front_2d_latency_ms
    if (a_lo, a_hi) == rec.front_accuracy_pct and (t_lo, t_hi) == rec.front_latency_ms:
        return ""
    if a_lo == a_hi and t_lo == t_hi:
        alone = f"it is a single point ({a_hi:.2f}%, {t_lo:.3f} ms)"
    else:
        alone = f"it spans {a_hi - a_lo:.2f} points and {t_hi / t_lo:.1f}× ({t_lo:.3f}–{t_hi:.3f} ms)"
    return (f"On accuracy and latency alone {alone}: the other candidates are on the front only for their "
            "smaller weights.")


def _recommendation(rec: Recommendation | None) -> list[Block]:
    out: list[Block] = [Paragraph(s) for s in recommendation_sentences(rec)]
    if rec is None:
        return out
    rows = [
        [r["goal"], MISSING if is_missing(r["label"]) else
         (baseline_name(str(r["label"])) if r["kind"] == "baseline" else str(r["label"])),
         MISSING if is_missing(r["label"]) else r["description"],
         _f(r["accuracy_pct"], ".2f"), _f(r["acc_drop_pts"], "+.2f"), _f(r["latency_ms"], ".3f"),
         _f(r["weight_kib"], ".1f"), _f(r["speedup_vs_fp32"], ".2f")]
        for _, r in rec.table.iterrows()
    ]
    header = ["goal", "candidate", "bits", "accuracy (%)", "acc. drop (pts)",
              f"{rec.latency} latency (ms)", "weights (KiB)", "speedup"]
    out.append(Paragraph(
        f"Picked from every evaluated candidate (Pareto, exact-ILP picks and baselines alike) on {rec.latency} "
        f"latency and test-split accuracy; *acc. drop* and the tolerances are accuracy points below "
        f"{rec.reference} ({rec.reference_accuracy_pct:.2f}%)."))
    out.append(Table(header, rows, ["l", "l", "l", "r", "r", "r", "r", "r"]))
    return out


def _timed_peers(peers: dict | None) -> list[dict]:
    return [r for r in (peers or {}).get("rows", []) if not is_missing(r.get("latency_ms"))]


def peers_sentence(peers: dict | None) -> str | None:
    """The pick's batch-1 time against the fastest peer's (:attr:`RunSummary.peers`), in words; None
    where the run timed no peer. Shared by the report and the console summary."""
    if peers is None:
        return None
    if peers.get("skipped"):
        return f"No peer runtime was timed: {peers['skipped']}."
    timed = _timed_peers(peers)
    if not timed:
        return "No peer runtime could be run on this machine (see the table for why)."
    best = min(timed, key=lambda r: r["latency_ms"])
    if is_missing(peers.get("pick_ms")):
        return (f"No candidate is within the accuracy band of FP32, so no pick was timed; the fastest peer is "
                f"{best['method']} ({best['latency_ms']:.3f} ms).")
    ratio = peers["pick_ms"] / best["latency_ms"]
    threads = peers.get("threads") or 0  # the peers' threads, which the pick is timed on too (stages/peers.py)
    on = f", {threads} thread{'' if threads == 1 else 's'} like the peers" if threads else ""
    return (f"The pick, **{peers['pick']}** ({peers['pick_ms']:.3f} ms at batch {peers.get('batch', 1)}{on}), takes "
            f"**{ratio:.2f}×** the time of the fastest peer on this machine, {best['method']} "
            f"({best['latency_ms']:.3f} ms): {'faster' if ratio < 1 else 'slower'} than what a user would run "
            "instead.")


def _peers(peers: dict | None) -> list[Block]:
    if peers is None:
        return [Paragraph("No peers were timed in this run (`peers=false`, or latencies not measured on a device).")]
    out: list[Block] = [Paragraph(peers_sentence(peers) or "")]
    if peers.get("skipped"):
        return out
    best = min((r["latency_ms"] for r in _timed_peers(peers)), default=None)

    def ratio(ms: object) -> object:
        return MISSING if best is None or is_missing(ms) else f"{float(ms) / best:.2f}"

    def acc(a: object) -> object:
        return MISSING if is_missing(a) else f"{100 * float(a):.2f}"
    rows = [[r["method"], acc(r.get("accuracy")),
             MISSING if is_missing(r.get("latency_ms")) else f"{r['latency_ms']:.3f}",
             ratio(r.get("latency_ms")) if not r.get("error") else f"not run: {r['error']}"]
            for r in peers["rows"]]
    if not is_missing(peers.get("pick_ms")):
        rows.append([f"**mpsearch pick** ({peers['pick']})", acc(peers.get("pick_accuracy")),
                     f"{peers['pick_ms']:.3f}", ratio(peers["pick_ms"])])
    threads = peers.get("threads", "?")
    where = ("each runtime in a process of its own, one at a time (in one process, their thread pools take "
             "each other's cores)" if peers.get("isolated") else "all in one process")
    out.append(Paragraph(
        f"What a user would run instead, on {peers.get('device', 'this machine')}: each timed at batch "
        f"{peers.get('batch', 1)} on {threads} thread{'' if threads == 1 else 's'}, the run's profile's, the pick's "
        f"compiled library too, {where}; median of "
        f"{peers.get('rounds', '?')} interleaved rounds; top-1 on the run's test split. The pick is the fastest "
        "evaluated candidate within the run's accuracy band of FP32."))
    out.append(Table(["method", "top-1 %", "latency (ms)", "÷ fastest peer"], rows, ["l", "r", "r", "r"]))
    return out


def _ilp(frame: pd.DataFrame, estimated: bool = False) -> list[Block]:
    ilp = frame[frame["kind"] == "ilp"]
    if ilp.empty:
        return [Paragraph("No exact-ILP candidates were evaluated in this run.")]
    return [
        Paragraph(
            "Candidates that minimise the additive proxy exactly (integer linear program) at a budget, "
            "evaluated like the Pareto candidates; marked ▲ *exact ILP pick* in the plots."
        ),
        _candidate_rows(ilp, with_front=False, estimated=estimated),
    ]


def _layers(summary: RunSummary, figures: Collection[str]) -> list[Block]:
    weight_bits, act_bits = bits_frame(summary)
    labels = list(weight_bits.index)

    def pair(label: str, layer: str) -> str:
        w, a = weight_bits.at[label, layer], act_bits.at[label, layer]
        return MISSING if is_missing(w) else f"W{w:.0f}A{a:.0f}"

    tags = group_tags(summary.layer_groups)
    rows = [
        [f"{layer} [{tags[layer]}]" if layer in tags else layer, summary.layer_macs.get(layer),
         summary.layer_params.get(layer)]
        + [pair(label, layer) for label in labels]
        for layer in summary.layers
    ]
    header = ["layer", "MACs", "params", *labels]
    groups = [Paragraph("Layer groups (each takes one precision; *[gN]* marks its members): " + "; ".join(
        f"g{i}: " + ", ".join(f"`{n}`" for n in g) for i, g in enumerate(summary.layer_groups, 1)) + ".")] \
        if summary.layer_groups else []
    return [
        _image("bits.png", figures, "No Pareto candidates: no bit-width heatmap."),
        *groups,
        Table(header, rows, ["l", "r", "r"] + ["l"] * len(labels)),
    ]


def _sensitivity(summary: RunSummary, figures: Collection[str]) -> list[Block]:
    sens = sensitivity_frame(summary)
    if sens.shape[1] == 0:
        return [Paragraph("No sensitivity signals were recorded for this run.")]
    return [
        Paragraph(f"Per-layer signals ({', '.join(f'`{c}`' for c in sens.columns)}); higher means the layer "
                  "is more sensitive to quantization."),
        _image("sensitivity.png", figures, "No sensitivity plot."),
        frame_table(sens, ".4g"),
    ]


def _cost_model(frame: pd.DataFrame, figures: Collection[str], estimated: bool = False) -> list[Block]:
    if estimated:
        return [Paragraph("Latencies in this run are roofline **estimates**: nothing was measured, so the "
                          "cost model could not be checked against measurement.")]
    points = prediction_points(frame)
    if points.empty:
        return [Paragraph("No candidate has both a predicted and a measured latency, so the cost model "
                          "could not be checked in this run.")]
    stats = prediction_stats(points)
    return [
        Paragraph(
            f"End-to-end latency predicted by the per-layer cost table versus measured, on the {stats['n']} "
            f"measured candidates: median |error| {stats['median_abs_pct']:.1f} %, mean (MAPE) "
            f"{stats['mean_abs_pct']:.1f} %, max {stats['max_abs_pct']:.1f} %."
        ),
        _image("prediction.png", figures, "No cost-model plot."),
    ]


def _proxy_validation(summary: RunSummary, figures: Collection[str]) -> list[Block]:
    pv = proxy_validation_table(summary)
    if pv is None:
        return [Paragraph("The proxy was not validated in this run (no random candidates were evaluated "
                          "against measured accuracy).")]
    header, align = ["estimator", "Spearman ρ", "points"], ["l", "r", "r"]
    rows: list[list[object]] = [[name, _f(pv.spearman.get(name), "+.3f"), int(pv.points[name].notna().sum())]
                                for name in pv.estimators]
    if pv.seconds:
        header, align = header + ["estimator time (s)"], align + ["r"]
        rows = [row + [_f(pv.seconds.get(str(row[0])), ".1f")] for row in rows]
    return [
        Paragraph(f"{pv.n} random candidates: each estimator's proxy against the measured accuracy drop "
                  "(FP32 minus candidate, percentage points). Spearman's ρ near +1 means the proxy ranks "
                  "candidates as the real accuracy does."),
        Table(header, rows, align),
        _image("proxy.png", figures, "No proxy-validation plot."),
    ]


def _search_fronts(summary: RunSummary, figures: Collection[str]) -> list[Block]:
    fronts = fronts_frame(summary)
    if fronts.empty:
        return [Paragraph("No search fronts were stored for this run.")]
    rows = [
        [name, len(part), _f(part["proxy"].min(), ".4g"), _f(part["latency_ms"].min(), ".3f"),
         _f(part["latency_ms"].max(), ".3f"), _f(part["weight_kib"].min(), ".1f")]
        for name, part in fronts.groupby("front", sort=False)
    ]
    return [
        Paragraph("The fronts the searches found on the proxy and the predicted latency (before any real "
                  "evaluation), side by side."),
        Table(["front", "points", "min proxy", "min latency (ms)", "max latency (ms)", "min weights (KiB)"],
              rows, ["l", "r", "r", "r", "r", "r"]),
        _image("fronts.png", figures, "No search-front plot."),
    ]


def build_document(
    summary: RunSummary, frame: pd.DataFrame | None = None, figures: Sequence[str] | None = None
) -> list[Block]:
    """Everything the report says, in order.

    Args:
        summary: The run summary.
        frame: :func:`~mpsearch.report.tables.candidates_frame` of the summary, computed if None.
        figures: Plot files written beside the report; :func:`available_figures` if None.

    Returns:
        The blocks.
    """
    frame = candidates_frame(summary) if frame is None else frame
    figures = available_figures(summary, frame) if figures is None else figures
    notes = list(summary.notes)
    if not frame.loc[frame["kind"] == "pareto", "measured_latency_ms"].notna().any():
        notes.append("No Pareto candidate was measured: latencies in the plot are cost-table predictions.")

    rec = summary_recommendation(summary, frame)
    dominated = [Paragraph(f"**Every Pareto candidate below is dominated by {baseline_name(label)}** on accuracy and "
                           f"{rec.latency} latency (see *Recommendation*).") for label in rec.dominating] if rec else []
    total_macs = sum(summary.layer_macs.get(n, 0) for n in summary.layers)
    total_params = sum(summary.layer_params.get(n, 0) for n in summary.layers)
    est = summary.estimated
    doc: list[Block] = [
        Heading(f"mpsearch report: {summary.model} on {summary.hw_profile}"
                + (" (estimated latencies: roofline, not measured)" if est else ""), 1),
        Bullets([
            f"**model**: {summary.model} ({len(summary.layers)} quantizable layers, "
            f"{total_macs:,} MACs, {total_params:,} parameters)",
            f"**hardware profile**: {summary.hw_profile}",
            f"**latency source**: {summary.latency_source}"
            + (" (roofline from the profile's peak rates; nothing was timed)" if est else ""),
            (f"**estimated for**: {summary.device}" if est else f"**measured on**: {summary.device}"),
            f"**run directory**: `{summary.run_dir}`",
        ]),
        Heading("Recommendation"), *_recommendation(rec),
        Heading("Baselines"), *_baselines(frame, est),
        Heading("Peers"), *_peers(summary.peers),
        Heading("Pareto front"), *dominated, *_pareto(frame, figures, est),
        Heading("Exact-ILP picks"), *_ilp(frame, est),
        Heading("Layers"), *_layers(summary, figures),
        Heading("Sensitivity"), *_sensitivity(summary, figures),
        Heading("Cost model"), *_cost_model(frame, figures, est),
        Heading("Proxy validation"), *_proxy_validation(summary, figures),
        Heading("Search fronts"), *_search_fronts(summary, figures),
        Heading("Estimated kernel latency per layer (ms, roofline)" if est
                else "Predicted kernel latency per layer (ms)"),
    ]
    if summary.layer_latency_ms is not None:
        table = summary.layer_latency_ms.copy()
        table.index.name = table.index.name or "layer"
        doc.append(frame_table(table, ".4f"))
    else:
        doc.append(Paragraph("No per-layer kernel latencies were stored for this run."))

    timings: list[list[object]] = [[stage, f"{secs:.1f}"] for stage, secs in summary.timings_s.items()]
    # A sum, not a measured total: stages may overlap or leave gaps.
    timings.append(["**sum**", f"{sum(summary.timings_s.values()):.1f}"])
    doc += [Heading("Timings"), Table(["stage", "wall time (s)"], timings, ["l", "r"])]
    doc += [Heading("Versions"), Table(["package", "version"], [list(kv) for kv in sorted(summary.versions.items())])]
    doc += [Heading("Notes"), Bullets(notes) if notes else Paragraph("None.")]
    config = yaml.safe_dump(to_plain(summary.config), sort_keys=False, default_flow_style=False)
    doc += [Heading("Config"), Code(config, "yaml")]
    return doc
