"""Report stage: tables of the evaluated candidates, plots drawn from them, ``report.md`` and ``report.html``.

``summary.json`` in the run folder holds the whole :class:`RunSummary`; :func:`rebuild_report`
(``mpsearch-report <run dir>``) redraws every report file from it without recomputing anything.
"""

from __future__ import annotations

from mpsearch.report.console import recommendation_lines, summary_rows
from mpsearch.report.document import FIGURES, available_figures, build_document, recommendation_sentences, \
    summary_recommendation
from mpsearch.report.html_report import render_html
from mpsearch.report.markdown import frame_to_markdown, markdown_table, render_markdown
from mpsearch.report.plots import (
    figure_png,
    plot_bits,
    plot_memory,
    plot_pareto,
    plot_prediction,
    plot_proxy_validation,
    plot_search_fronts,
    plot_sensitivity,
)
from mpsearch.report.store import SUMMARY_FILE, load_summary, save_summary, summary_from_dict, summary_to_dict
from mpsearch.report.tables import (
    EvaluatedCandidate,
    ProxyValidation,
    Recommendation,
    ReportError,
    RunSummary,
    bits_frame,
    candidates_frame,
    fronts_frame,
    group_tags,
    memory_points,
    non_dominated,
    pareto_points,
    prediction_points,
    prediction_stats,
    proxy_validation_table,
    recommend,
    sensitivity_frame,
)
from mpsearch.report.writer import atomic_write_bytes, draw_figures, rebuild_report, write_report

__all__ = [
    "FIGURES",
    "SUMMARY_FILE",
    "EvaluatedCandidate",
    "ProxyValidation",
    "Recommendation",
    "ReportError",
    "RunSummary",
    "atomic_write_bytes",
    "available_figures",
    "bits_frame",
    "build_document",
    "candidates_frame",
    "draw_figures",
    "figure_png",
    "frame_to_markdown",
    "fronts_frame",
    "group_tags",
    "load_summary",
    "markdown_table",
    "memory_points",
    "non_dominated",
    "pareto_points",
    "plot_bits",
    "plot_memory",
    "plot_pareto",
    "plot_prediction",
    "plot_proxy_validation",
    "plot_search_fronts",
    "plot_sensitivity",
    "prediction_points",
    "prediction_stats",
    "proxy_validation_table",
    "rebuild_report",
    "recommend",
    "recommendation_lines",
    "recommendation_sentences",
    "render_html",
    "render_markdown",
    "save_summary",
    "sensitivity_frame",
    "summary_from_dict",
    "summary_recommendation",
    "summary_rows",
    "summary_to_dict",
    "write_report",
]
