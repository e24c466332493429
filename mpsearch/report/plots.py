"""Figures drawn from the report tables; no numbers are computed here that the tables do not hold."""

from __future__ import annotations

import io
import logging
import math

import matplotlib

matplotlib.use("Agg")  # headless: the report is written by CLI runs and tests, never shown

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mpsearch.report.tables import (  # noqa: E402
    FP32_LABEL,
    INT8_LABEL,
    ProxyValidation,
    memory_points,
    pareto_points,
    prediction_stats,
)

logger = logging.getLogger(__name__)

_BASELINE_STYLE = {
    FP32_LABEL: {"marker": "*", "color": "tab:red", "s": 180, "name": "FP32"},
    INT8_LABEL: {"marker": "D", "color": "tab:green", "s": 70, "name": "uniform INT8"},
}
_OTHER_BASELINE = {"marker": "X", "color": "tab:gray", "s": 70}
_ILP_STYLE = {"marker": "^", "color": "tab:orange", "s": 70}
_KIND_STYLE = {
    "pareto": {"marker": "o", "color": "tab:blue"},
    "ilp": {"marker": "^", "color": "tab:orange"},
    "baseline": {"marker": "s", "color": "tab:red"},
}


def _empty(fig: Figure, ax: plt.Axes, text: str) -> Figure:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def _mark_others(ax: plt.Axes, points: pd.DataFrame, x: str, y: str) -> None:
    """Draw the baselines and exact-ILP picks of ``points`` (one legend entry for all ILP picks)."""
    ilp = points[points["kind"] == "ilp"]
    if not ilp.empty:
        ax.scatter(ilp[x], ilp[y], zorder=3, edgecolors="black", label="exact ILP pick", **_ILP_STYLE)
        for row in ilp.itertuples():
            ax.annotate(row.label, (getattr(row, x), getattr(row, y)), xytext=(5, 3),
                        textcoords="offset points", fontsize=7, color=_ILP_STYLE["color"])
    for row in points[points["kind"] == "baseline"].itertuples():
        style = dict(_BASELINE_STYLE.get(row.label.lower(), _OTHER_BASELINE))
        name = style.pop("name", row.label)
        ax.scatter([getattr(row, x)], [getattr(row, y)], zorder=3, edgecolors="black", label=name, **style)
        ax.annotate(name, (getattr(row, x), getattr(row, y)), xytext=(6, 4),
                    textcoords="offset points", fontsize=8, color=style["color"])


def _front_plot(points: pd.DataFrame, x: str, errors: pd.Series | None, front_label: str) -> Figure:
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    pareto = points[points["kind"] == "pareto"]
    if not pareto.empty:
        ax.errorbar(pareto[x], pareto["accuracy_pct"], xerr=errors, fmt="o", color="tab:blue",
                    alpha=0.45, markersize=5, elinewidth=0.8, label="Pareto candidates")
    front = pareto[pareto["on_front"]].sort_values(x)
    if not front.empty:
        ax.plot(front[x], front["accuracy_pct"], drawstyle="steps-post", color="tab:blue", marker="o",
                markersize=7, markeredgecolor="black", linewidth=1.5, label=front_label)
        for row in front.itertuples():
            ax.annotate(row.label, (getattr(row, x), row.accuracy_pct), xytext=(4, -10),
                        textcoords="offset points", fontsize=7)
    _mark_others(ax, points, x, "accuracy_pct")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.margins(x=0.1, y=0.08)  # room for the point labels
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_pareto(frame: pd.DataFrame) -> Figure:
    """Accuracy versus latency: pareto points, the non-dominated ones joined, baselines and ILP picks marked.

    Args:
        frame: Output of :func:`~mpsearch.report.tables.candidates_frame`.

    Returns:
        The figure; the caller closes it (``plt.close(fig)``).
    """
    points, measured = pareto_points(frame)
    if points.empty:
        fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
        return _empty(fig, ax, "no candidate has both latency and accuracy")
    pareto = points[points["kind"] == "pareto"]
    estimated = "latency_source" in frame.columns and bool((frame["latency_source"] == "estimated").any())
    if estimated:  # roofline estimates, never to be read as measurements
        fig = _front_plot(points, "latency_ms", None, "non-dominated (estimated)")
        ax = fig.axes[0]
        ax.set_xlabel("estimated latency (ms, roofline; not measured)")
        ax.set_title("accuracy vs estimated latency (roofline)", fontsize=10)
        return fig
    err = pareto["latency_std_ms"] if measured and pareto["latency_std_ms"].notna().any() else None
    fig = _front_plot(points, "latency_ms", err,
                      "non-dominated (" + ("measured" if measured else "predicted") + ")")
    ax = fig.axes[0]
    if measured:
        ax.set_xlabel("measured latency (ms)")
    else:
        ax.set_xlabel("predicted latency (ms, cost table; nothing measured)")
    ax.set_title("accuracy vs latency", fontsize=10)
    return fig


def plot_memory(frame: pd.DataFrame) -> Figure:
    """Accuracy versus weight memory, the front on those two axes joined, baselines and ILP picks marked.

    Args:
        frame: Output of :func:`~mpsearch.report.tables.candidates_frame`.
    """
    points = memory_points(frame)
    if points.empty:
        fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
        return _empty(fig, ax, "no candidate has an accuracy")
    fig = _front_plot(points, "weight_kib", None, "non-dominated (accuracy, memory)")
    ax = fig.axes[0]
    ax.set_xlabel("weight memory (KiB, packed)")
    ax.set_title("accuracy vs weight memory", fontsize=10)
    return fig


def _luminance(rgba: np.ndarray) -> float:
    return float(0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2])


def plot_bits(weight_bits: pd.DataFrame, act_bits: pd.DataFrame, groups: dict[str, str] | None = None) -> Figure:
    """Heatmaps of the bit-widths along the front: weights on top, activations below, one cell per layer.

    Both panels share one discrete colour scale (one colour per bit-width present, so 32-bit layers do
    not flatten a linear 2..8 scale) and every cell is labelled with its bit-width.

    Args:
        weight_bits: Index candidates (sorted by latency), columns layers; from
            :func:`~mpsearch.report.tables.bits_frame`.
        act_bits: Same shape, activation bits.
        groups: ``{layer: tag}`` of layers that share one precision (from
            :func:`~mpsearch.report.tables.group_tags`); members get their tag in the axis label and a
            shared tick colour.

    Returns:
        The figure; the caller closes it. ``fig.axes[0]`` is the weight panel, ``fig.axes[1]`` the
        activation panel.
    """
    n_rows, n_cols = weight_bits.shape
    if weight_bits.empty:
        fig, ax = plt.subplots(figsize=(4.0, 2.5), layout="constrained")
        return _empty(fig, ax, "no Pareto candidates")
    a_bits = act_bits.reindex(index=weight_bits.index, columns=weight_bits.columns)
    w = weight_bits.to_numpy(dtype=float)
    a = a_bits.to_numpy(dtype=float)
    levels = np.unique(np.concatenate([w[np.isfinite(w)], a[np.isfinite(a)]]))
    fig, axes = plt.subplots(
        2, 1, figsize=(max(5.0, 0.45 * n_cols + 3.0), max(3.6, 2 * (0.32 * n_rows + 0.9) + 1.6)),
        layout="constrained", sharex=True,
    )
    if levels.size == 0:
        return _empty(fig, axes[0], "no bit-widths to show")
    colors = plt.get_cmap("viridis")(np.linspace(0.1, 0.92, levels.size))
    cmap = ListedColormap(colors)
    norm = BoundaryNorm(np.arange(levels.size + 1) - 0.5, levels.size)

    image = None
    for ax, values, title in ((axes[0], w, "weight bits"), (axes[1], a, "activation bits")):
        rank = np.full(values.shape, np.nan)
        for i, level in enumerate(levels):
            rank[values == level] = i
        image = ax.imshow(np.ma.masked_invalid(rank), cmap=cmap, norm=norm, aspect="auto",
                          interpolation="nearest")
        for i in range(n_rows):
            for j in range(n_cols):
                if np.isfinite(values[i, j]):
                    dark = _luminance(colors[int(rank[i, j])]) < 0.5
                    ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
        # Thin white grid between cells so neighbouring equal colours still read as separate layers.
        ax.set_xticks(np.arange(-0.5, n_cols), minor=True)
        ax.set_yticks(np.arange(-0.5, n_rows), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.8)
        ax.tick_params(which="minor", length=0)
        ax.set_yticks(range(n_rows), [str(r) for r in weight_bits.index], fontsize=8)
        ax.set_ylabel("candidate\n(fastest first)", fontsize=8)
        ax.set_title(title, fontsize=9, loc="left")
    groups = groups or {}
    axes[1].set_xticks(range(n_cols), [f"{c} [{groups[c]}]" if c in groups else str(c) for c in weight_bits.columns],
                       rotation=90, fontsize=7)
    tags = sorted(set(groups.values()), key=lambda t: int(t[1:]) if t[1:].isdigit() else 0)
    palette = plt.get_cmap("tab10")
    for label, c in zip(axes[1].get_xticklabels(), weight_bits.columns):
        if c in groups:
            label.set_color(palette(tags.index(groups[c]) % 10))
    axes[1].set_xlabel("layer (graph order)" + ("; [gN]: layer group, one precision" if groups else ""))
    bar = fig.colorbar(image, ax=list(axes), ticks=range(levels.size), shrink=0.8)
    bar.ax.set_yticklabels([f"{v:.0f}" for v in levels])
    bar.set_label("bits")
    return fig


def plot_sensitivity(sens: pd.DataFrame) -> Figure:
    """One bar panel per sensitivity signal, layers in graph order; log scale where all values are positive.

    Args:
        sens: Output of :func:`~mpsearch.report.tables.sensitivity_frame`.
    """
    n = max(1, sens.shape[1])
    fig, axes = plt.subplots(n, 1, figsize=(max(5.0, 0.32 * len(sens.index) + 2.0), 1.0 + 2.2 * n),
                             layout="constrained", sharex=True, squeeze=False)
    axes = axes[:, 0]
    if sens.empty or sens.shape[1] == 0:
        return _empty(fig, axes[0], "no sensitivity signals")
    x = np.arange(len(sens.index))
    for ax, (name, values) in zip(axes, sens.items()):
        v = values.to_numpy(dtype=float)
        ax.bar(x, np.where(np.isfinite(v), v, 0.0), color="tab:purple", alpha=0.8)
        finite = v[np.isfinite(v)]
        if finite.size and (finite > 0).all() and finite.max() / finite.min() > 50:
            ax.set_yscale("log")
        ax.set_title(str(name), fontsize=9, loc="left")
        ax.grid(True, axis="y", alpha=0.3)
    axes[-1].set_xticks(x, [str(i) for i in sens.index], rotation=90, fontsize=7)
    axes[-1].set_xlabel("layer (graph order)")
    fig.suptitle("sensitivity per layer", fontsize=10)
    return fig


def plot_prediction(points: pd.DataFrame) -> Figure:
    """Cost model check: predicted versus measured end-to-end latency, y = x and ±10 % drawn.

    Args:
        points: Output of :func:`~mpsearch.report.tables.prediction_points`.
    """
    fig, ax = plt.subplots(figsize=(5.6, 5.0), layout="constrained")
    if points.empty:
        return _empty(fig, ax, "no candidate has both a predicted and a measured latency")
    lo = float(min(points["measured_ms"].min(), points["predicted_ms"].min())) * 0.9
    hi = float(max(points["measured_ms"].max(), points["predicted_ms"].max())) * 1.1
    line = np.array([lo, hi])
    ax.fill_between(line, line * 0.9, line * 1.1, color="gray", alpha=0.15, label="±10 %")
    ax.plot(line, line, "--", color="gray", linewidth=1, label="y = x")
    for kind, style in _KIND_STYLE.items():
        sub = points[points["kind"] == kind]
        if not sub.empty:
            ax.scatter(sub["measured_ms"], sub["predicted_ms"], edgecolors="black", zorder=3,
                       label={"ilp": "exact ILP pick"}.get(kind, kind), **style)
    if len(points) <= 15:
        for row in points.itertuples():
            ax.annotate(f"{row.label} {row.error_pct:+.1f}%", (row.measured_ms, row.predicted_ms),
                        xytext=(5, -9), textcoords="offset points", fontsize=7)
    stats = prediction_stats(points)
    ax.set_title(f"cost model: median |error| {stats['median_abs_pct']:.1f} %, "
                 f"max {stats['max_abs_pct']:.1f} % (n = {stats['n']})", fontsize=10)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms, cost table)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def plot_proxy_validation(pv: ProxyValidation) -> Figure:
    """Proxy versus measured accuracy drop, one panel per estimator, Spearman's ρ in each title.

    Args:
        pv: Output of :func:`~mpsearch.report.tables.proxy_validation_table`.
    """
    n = max(1, len(pv.estimators))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.0 + 4.2 * cols, 0.6 + 3.6 * rows),
                             layout="constrained", squeeze=False)
    flat = list(axes.ravel())
    if not pv.estimators:
        return _empty(fig, flat[0], "no estimator values among the points")
    for ax, name in zip(flat, pv.estimators):
        pair = pv.points[[name, "acc_drop_pts"]].dropna()
        ax.scatter(pair[name], pair["acc_drop_pts"], color="tab:blue", alpha=0.7, edgecolors="black",
                   linewidths=0.5)
        if len(pair) and (pair[name] > 0).all() and pair[name].max() / pair[name].min() > 50:
            ax.set_xscale("log")
        rho = pv.spearman.get(name, np.nan)
        ax.set_title(f"{name}: Spearman ρ = {rho:.2f} (n = {len(pair)})", fontsize=9)
        ax.set_xlabel(f"proxy ({name})", fontsize=8)
        ax.set_ylabel("measured accuracy drop (pts)", fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in flat[len(pv.estimators):]:
        ax.set_axis_off()
    fig.suptitle(f"proxy vs measured accuracy drop on {pv.n} random candidates", fontsize=10)
    return fig


def plot_search_fronts(fronts: pd.DataFrame, estimated: bool = False) -> Figure:
    """The search fronts side by side (e.g. Optuna vs exact ILP): proxy versus predicted latency.

    Args:
        fronts: Output of :func:`~mpsearch.report.tables.fronts_frame`.
        estimated: The latencies are roofline estimates (the axis says so).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    data = fronts.dropna(subset=["proxy", "latency_ms"])
    if data.empty:
        return _empty(fig, ax, "no search fronts")
    markers = ["o", "^", "s", "D", "v", "P"]
    for i, (name, part) in enumerate(data.groupby("front", sort=False)):
        part = part.sort_values("latency_ms")
        ax.plot(part["latency_ms"], part["proxy"], drawstyle="steps-post", marker=markers[i % len(markers)],
                markersize=6, markeredgecolor="black", linewidth=1.2, alpha=0.85,
                label=f"{name} ({len(part)} points)")
    if (data["proxy"] > 0).all() and data["proxy"].max() / data["proxy"].min() > 50:
        ax.set_yscale("log")
    ax.set_xlabel("estimated latency (ms, roofline)" if estimated else "predicted latency (ms, cost table)")
    ax.set_ylabel("sensitivity proxy (lower is better)")
    ax.set_title("search fronts on the proxy", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """Render a figure to PNG bytes and close it.

    Args:
        fig: The figure; closed even if rendering fails.
        dpi: Resolution.

    Returns:
        The PNG file's bytes.
    """
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
        return buf.getvalue()
    finally:
        plt.close(fig)
