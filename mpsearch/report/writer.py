"""Write the report files into the run directory, each one atomically, all drawn from one summary."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from mpsearch.report.document import FIGURES, available_figures
from mpsearch.report.html_report import render_html
from mpsearch.report.markdown import render_markdown
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
from mpsearch.report.store import SUMMARY_FILE, load_summary, save_summary
from mpsearch.report.tables import (
    ReportError,
    RunSummary,
    bits_frame,
    group_tags,
    candidates_frame,
    fronts_frame,
    prediction_points,
    proxy_validation_table,
    sensitivity_frame,
)
from mpsearch.storage import atomic_write_bytes

logger = logging.getLogger(__name__)

#: Report files besides the plots, keyed as :func:`write_report` returns them.
FILES = {
    "summary_json": SUMMARY_FILE,
    "pareto_csv": "pareto.csv",
    "pareto_parquet": "pareto.parquet",
    "report_md": "report.md",
    "report_html": "report.html",
}


def _drawers(summary: RunSummary, frame: pd.DataFrame) -> dict[str, Callable[[], Figure]]:
    def proxy() -> Figure:
        pv = proxy_validation_table(summary)
        if pv is None:
            raise ReportError("no proxy validation to draw")
        return plot_proxy_validation(pv)

    return {
        "pareto.png": lambda: plot_pareto(frame),
        "memory.png": lambda: plot_memory(frame),
        "bits.png": lambda: plot_bits(*bits_frame(summary), group_tags(summary.layer_groups)),
        "sensitivity.png": lambda: plot_sensitivity(sensitivity_frame(summary)),
        "prediction.png": lambda: plot_prediction(prediction_points(frame)),
        "proxy.png": proxy,
        "fronts.png": lambda: plot_search_fronts(fronts_frame(summary), summary.estimated),
    }


def draw_figures(summary: RunSummary, frame: pd.DataFrame | None = None) -> dict[str, bytes]:
    """PNG bytes of every plot that has data, keyed by file name (see :data:`~mpsearch.report.document.FIGURES`)."""
    frame = candidates_frame(summary) if frame is None else frame
    drawers = _drawers(summary, frame)
    return {name: figure_png(drawers[name]()) for name in available_figures(summary, frame)}


def _key(file: str) -> str:
    return file.replace(".", "_")


def write_report(summary: RunSummary, store: bool = True) -> dict[str, Path]:
    """Write the whole report into ``summary.run_dir``.

    Files: ``summary.json`` (the summary itself, first, unless ``store`` is False), ``pareto.csv`` and
    ``pareto.parquet`` (the candidates table), one PNG per plot with data (a plot file left from an
    earlier write whose data is now absent is removed), ``report.md`` and the self-contained
    ``report.html`` last, so the links they hold point at files already in place.

    Args:
        summary: The run summary.
        store: Write ``summary.json``; False when rebuilding from it.

    Returns:
        Paths keyed ``"summary_json"``, ``"pareto_csv"``, ``"pareto_parquet"``, ``"report_md"``,
        ``"report_html"`` and the plot file name with ``_`` for ``.`` (``"pareto_png"``, ``"bits_png"``, ...).
    """
    frame = candidates_frame(summary)  # validates the summary before anything is written
    run_dir = Path(summary.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if store:
        paths["summary_json"] = save_summary(summary)
    paths["pareto_csv"] = atomic_write_bytes(run_dir / FILES["pareto_csv"], frame.to_csv(index=False).encode())
    paths["pareto_parquet"] = atomic_write_bytes(run_dir / FILES["pareto_parquet"], frame.to_parquet(index=False))

    images = draw_figures(summary, frame)
    for name, data in images.items():
        paths[_key(name)] = atomic_write_bytes(run_dir / name, data)
    for name in FIGURES:
        if name not in images and (run_dir / name).exists():
            logger.info("removing %s: this run has no data for it", name)
            (run_dir / name).unlink()

    figures = list(images)
    paths["report_md"] = atomic_write_bytes(
        run_dir / FILES["report_md"], render_markdown(summary, frame, figures).encode())
    paths["report_html"] = atomic_write_bytes(
        run_dir / FILES["report_html"], render_html(summary, images, frame, figures).encode())
    logger.info("report written to %s", paths["report_html"])
    return paths


def rebuild_report(run_dir: str | Path) -> dict[str, Path]:
    """Redraw every report file of a run folder from its ``summary.json``, recomputing nothing.

    Raises:
        ReportError: ``run_dir`` is not a run folder or its summary is unreadable (one line, with the fix).
    """
    summary = load_summary(run_dir)
    return write_report(summary, store=False)
