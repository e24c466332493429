"""Report stage: tables of the evaluated candidates, plots drawn from them, and ``report.md``."""

from __future__ import annotations

from mpsearch.report.markdown import frame_to_markdown, markdown_table, render_markdown
from mpsearch.report.plots import figure_png, plot_bits, plot_pareto
from mpsearch.report.tables import (
    EvaluatedCandidate,
    ReportError,
    RunSummary,
    bits_frame,
    candidates_frame,
    non_dominated,
    pareto_points,
)
from mpsearch.report.writer import atomic_write_bytes, write_report

__all__ = [
    "EvaluatedCandidate",
    "ReportError",
    "RunSummary",
    "atomic_write_bytes",
    "bits_frame",
    "candidates_frame",
    "figure_png",
    "frame_to_markdown",
    "markdown_table",
    "non_dominated",
    "pareto_points",
    "plot_bits",
    "plot_pareto",
    "render_markdown",
    "write_report",
]
