"""Figures drawn from the report tables; no numbers are computed here that the tables do not hold."""

from __future__ import annotations

import io
import logging

import matplotlib

matplotlib.use("Agg")  # headless: the report is written by CLI runs and tests, never shown

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mpsearch.report.tables import FP32_LABEL, INT8_LABEL, pareto_points  # noqa: E402

logger = logging.getLogger(__name__)

_BASELINE_STYLE = {
    FP32_LABEL: {"marker": "*", "color": "tab:red", "s": 180, "name": "FP32"},
    INT8_LABEL: {"marker": "D", "color": "tab:green", "s": 70, "name": "uniform INT8"},
}
_OTHER_BASELINE = {"marker": "X", "color": "tab:gray", "s": 70}


def _empty(fig: Figure, ax: plt.Axes, text: str) -> Figure:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def plot_pareto(frame: pd.DataFrame) -> Figure:
    """Accuracy versus latency: pareto points, the non-dominated ones joined, baselines marked.

    Args:
        frame: Output of :func:`~mpsearch.report.tables.candidates_frame`.

    Returns:
        The figure; the caller closes it (``plt.close(fig)``).
    """
    points, measured = pareto_points(frame)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    if points.empty:
        return _empty(fig, ax, "no candidate has both latency and accuracy")

    pareto = points[points["kind"] == "pareto"]
    err = pareto["latency_std_ms"] if measured and pareto["latency_std_ms"].notna().any() else None
    ax.errorbar(
        pareto["latency_ms"], pareto["accuracy_pct"], xerr=err, fmt="o", color="tab:blue",
        alpha=0.45, markersize=5, elinewidth=0.8, label="Pareto candidates",
    )
    front = pareto[pareto["on_front"]].sort_values("latency_ms")
    if not front.empty:
        ax.plot(
            front["latency_ms"], front["accuracy_pct"], drawstyle="steps-post", color="tab:blue",
            marker="o", markersize=7, markeredgecolor="black", linewidth=1.5,
            label="non-dominated (" + ("measured" if measured else "predicted") + ")",
        )
        for row in front.itertuples():
            ax.annotate(row.label, (row.latency_ms, row.accuracy_pct), xytext=(4, -10),
                        textcoords="offset points", fontsize=7)

    for row in points[points["kind"] == "baseline"].itertuples():
        style = dict(_BASELINE_STYLE.get(row.label.lower(), _OTHER_BASELINE))
        name = style.pop("name", row.label)
        ax.scatter([row.latency_ms], [row.accuracy_pct], zorder=3, edgecolors="black", label=name, **style)
        ax.annotate(name, (row.latency_ms, row.accuracy_pct), xytext=(6, 4),
                    textcoords="offset points", fontsize=8, color=style["color"])

    if measured:
        ax.set_xlabel("measured latency (ms)")
    else:
        ax.set_xlabel("predicted latency (ms, cost table; nothing measured)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.margins(x=0.1, y=0.08)  # room for the point labels
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_bits(weight_bits: pd.DataFrame, act_bits: pd.DataFrame) -> Figure:
    """Heatmap of weight bits per layer along the front, cells annotated ``"w/a"``.

    Args:
        weight_bits: Index candidates (sorted by latency), columns layers; from
            :func:`~mpsearch.report.tables.bits_frame`.
        act_bits: Same shape, activation bits.

    Returns:
        The figure; the caller closes it.
    """
    n_rows, n_cols = weight_bits.shape
    fig, ax = plt.subplots(
        figsize=(max(4.0, 0.55 * n_cols + 2.5), max(2.5, 0.42 * n_rows + 1.8)), layout="constrained"
    )
    if weight_bits.empty:
        return _empty(fig, ax, "no Pareto candidates")

    w = weight_bits.to_numpy(dtype=float)
    # One colour per bit-width present: 32-bit layers would flatten a linear 2..8 scale.
    levels = np.unique(w[np.isfinite(w)])
    if levels.size == 0:
        return _empty(fig, ax, "no bit-widths to show")
    rank = np.full(w.shape, np.nan)
    for i, level in enumerate(levels):
        rank[w == level] = i
    cmap = ListedColormap(plt.get_cmap("viridis")(np.linspace(0.15, 0.9, levels.size)))
    norm = BoundaryNorm(np.arange(levels.size + 1) - 0.5, levels.size)
    image = ax.imshow(np.ma.masked_invalid(rank), cmap=cmap, norm=norm, aspect="auto")

    a = act_bits.reindex(index=weight_bits.index, columns=weight_bits.columns).to_numpy(dtype=float)
    for i in range(n_rows):
        for j in range(n_cols):
            if np.isfinite(w[i, j]):
                text = f"{w[i, j]:.0f}/{a[i, j]:.0f}" if np.isfinite(a[i, j]) else f"{w[i, j]:.0f}/?"
                dark = rank[i, j] < levels.size / 2
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")

    ax.set_xticks(range(n_cols), [str(c) for c in weight_bits.columns], rotation=90, fontsize=7)
    ax.set_yticks(range(n_rows), [str(r) for r in weight_bits.index], fontsize=8)
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel("candidate (fastest first)")
    ax.set_title("weight bits per layer (cells: weight/activation bits)", fontsize=9)
    bar = fig.colorbar(image, ax=ax, ticks=range(levels.size))
    bar.ax.set_yticklabels([f"{v:.0f}" for v in levels])
    bar.set_label("weight bits")
    return fig


def figure_png(fig: Figure, dpi: int = 120) -> bytes:
    """Render a figure to PNG bytes and close it.

    Args:
        fig: The figure; closed even if rendering fails.
        dpi: Resolution.

    Returns:
        The PNG file's bytes.
    """
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        return buf.getvalue()
    finally:
        plt.close(fig)
