"""The end-of-run console summary: a short table of the evaluated candidates and the recommendation."""

from __future__ import annotations

import pandas as pd

from mpsearch.report.document import (
    baseline_name, is_missing, peers_sentence, plain_text, recommendation_sentences, summary_recommendation,
)
from mpsearch.report.tables import RunSummary, candidates_frame

def summary_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows the console shows: the baselines, the Pareto candidates on the measured front, the ILP picks.

    Args:
        frame: Output of :func:`~mpsearch.report.tables.candidates_frame`.

    Returns:
        Those rows of ``frame``, baselines first, then the rest sorted by latency.
    """
    base = frame[frame["kind"] == "baseline"]
    front = frame[(frame["kind"] == "pareto") & frame["pareto_measured"].astype(bool)]
    if front.empty:  # nothing measured: every Pareto candidate
        front = frame[frame["kind"] == "pareto"]
    return pd.concat([base, front, frame[frame["kind"] == "ilp"]])


def recommendation_lines(summary: RunSummary) -> list[str]:
    """Plain-text lines for the end of a CLI run: a summary table, then the recommendation.

    Args:
        summary: The run summary (the same one the report is written from).

    Returns:
        Lines without trailing newlines and without markdown marks.
    """
    frame = candidates_frame(summary)
    rows = summary_rows(frame)
    estimated = summary.estimated
    lat_head = "est. ms" if estimated else "ms"
    table = [["candidate", "bits", "top-1 %", lat_head, "KiB", "speedup"]]
    for _, r in rows.iterrows():
        lat = r["measured_latency_ms"]
        table.append([
            baseline_name(str(r["label"])) if r["kind"] == "baseline" else str(r["label"]),
            str(r["description"]) if len(str(r["description"])) <= 40 else str(r["description"])[:39] + "…",
            "–" if is_missing(r["accuracy"]) else f"{100 * r['accuracy']:.2f}",
            "–" if is_missing(lat) else f"{lat:.3f}",
            f"{r['weight_kib']:.1f}",
            "–" if is_missing(r["speedup_vs_fp32"]) else f"{r['speedup_vs_fp32']:.2f}×",
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    sentences = recommendation_sentences(summary_recommendation(summary, frame)) + [peers_sentence(summary.peers)]
    return lines + [plain_text(s) for s in sentences if s]
