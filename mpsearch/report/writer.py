"""Write the report files into the run directory, each one atomically."""

from __future__ import annotations

import logging
from pathlib import Path

from mpsearch.report.markdown import render_markdown
from mpsearch.report.plots import figure_png, plot_bits, plot_pareto
from mpsearch.storage import atomic_write_bytes
from mpsearch.report.tables import RunSummary, bits_frame, candidates_frame

logger = logging.getLogger(__name__)


def write_report(summary: RunSummary) -> dict[str, Path]:
    """Write ``pareto.csv``, ``pareto.png``, ``bits.png`` and ``report.md`` into ``summary.run_dir``.

    Args:
        summary: The run summary.

    Returns:
        Paths keyed ``"pareto_csv"``, ``"pareto_png"``, ``"bits_png"``, ``"report_md"``.
    """
    run_dir = Path(summary.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    frame = candidates_frame(summary)
    weight_bits, act_bits = bits_frame(summary)

    paths = {
        "pareto_csv": atomic_write_bytes(run_dir / "pareto.csv", frame.to_csv(index=False).encode()),
        "pareto_png": atomic_write_bytes(run_dir / "pareto.png", figure_png(plot_pareto(frame))),
        "bits_png": atomic_write_bytes(run_dir / "bits.png", figure_png(plot_bits(weight_bits, act_bits))),
    }
    # Last, so the links it holds point at files already in place.
    paths["report_md"] = atomic_write_bytes(run_dir / "report.md", render_markdown(summary, frame).encode())
    logger.info("report written to %s", paths["report_md"])
    return paths
