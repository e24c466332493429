"""``report.md``: a tiny markdown table formatter and the report's text, rendered from the tables."""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mpsearch.report.tables import (
    FP32_LABEL,
    INT8_LABEL,
    ReportError,
    RunSummary,
    bits_frame,
    candidates_frame,
)

logger = logging.getLogger(__name__)

MISSING = "–"


def _is_missing(value: object) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _cell(value: object) -> str:
    if _is_missing(value):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value).replace("\n", " ").replace("|", "\\|")


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[object]], align: Sequence[str] | None = None
) -> str:
    """Format a GitHub-flavoured markdown table.

    Args:
        header: Column titles.
        rows: Cells; strings are used as given (pipes escaped), None/NaN print as ``–``, floats as
            ``.4g``, True as ``yes``.
        align: Per column ``"l"`` or ``"r"``; left by default.

    Returns:
        The table, one line per row, ending in a newline.
    """
    align = list(align) if align is not None else ["l"] * len(header)
    if len(align) != len(header):
        raise ReportError(f"align has {len(align)} entries for {len(header)} columns")
    lines = [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "|" + "|".join("---:" if a == "r" else ":---" for a in align) + "|",
    ]
    for row in rows:
        cells = [_cell(c) for c in row]
        if len(cells) != len(header):
            raise ReportError(f"row has {len(cells)} cells for {len(header)} columns: {cells}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def frame_to_markdown(frame: pd.DataFrame, floatfmt: str = ".4g", index: bool = True) -> str:
    """Markdown table of a DataFrame; numeric columns right-aligned, floats formatted with ``floatfmt``.

    Args:
        frame: The table.
        floatfmt: Format spec for float cells.
        index: Include the index as the first column.

    Returns:
        The table text.
    """
    header = ([str(frame.index.name or "")] if index else []) + [str(c) for c in frame.columns]
    align = (["l"] if index else []) + [
        "r" if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) else "l"
        for c in frame.columns
    ]

    def fmt(v: object) -> object:
        if isinstance(v, (float, np.floating)) and not _is_missing(v):
            return format(float(v), floatfmt)
        return v

    rows = [
        ([idx] if index else []) + [fmt(v) for v in values]
        for idx, values in zip(frame.index, frame.itertuples(index=False, name=None))
    ]
    return markdown_table(header, rows, align)


def _f(value: object, spec: str) -> str:
    return MISSING if _is_missing(value) else format(float(value), spec)  # type: ignore[arg-type]


def _latency(row: pd.Series) -> str:
    mean, std = row["measured_latency_ms"], row["latency_std_ms"]
    if _is_missing(mean):
        return MISSING
    return f"{mean:.3f} ± {std:.3f}" if not _is_missing(std) else f"{mean:.3f}"


def _plain(value: Any) -> Any:
    """Convert a config to what ``yaml.safe_dump`` accepts."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    logger.debug("config value of type %s written as its string", type(value).__name__)
    return str(value)


def _baselines_section(frame: pd.DataFrame) -> list[str]:
    base = frame[frame["kind"] == "baseline"]
    if base.empty:
        return ["No baselines were evaluated.\n"]
    rows = [
        [
            {FP32_LABEL: "FP32", INT8_LABEL: "uniform INT8"}.get(r["label"].lower(), r["label"]),
            r["description"],
            _f(100 * r["accuracy"], ".2f"),
            _latency(r),
            _f(r["predicted_latency_ms"], ".3f"),
            _f(r["weight_kib"], ".1f"),
            _f(r["speedup_vs_fp32"], ".2f"),
        ]
        for _, r in base.iterrows()
    ]
    header = ["baseline", "bits", "accuracy (%)", "measured (ms)", "predicted (ms)", "weights (KiB)", "speedup"]
    return [markdown_table(header, rows, ["l", "l", "r", "r", "r", "r", "r"])]


def _pareto_section(frame: pd.DataFrame) -> list[str]:
    front = frame[frame["kind"] == "pareto"]
    if front.empty:
        return ["The search returned no Pareto candidates.\n"]
    rows = [
        [
            r["label"],
            r["trial"],
            r["description"],
            _f(r["proxy"], ".4g"),
            _f(r["predicted_latency_ms"], ".3f"),
            _latency(r),
            _f(r["prediction_error_pct"], "+.1f"),
            _f(r["weight_kib"], ".1f"),
            _f(100 * r["accuracy"], ".2f"),
            _f(r["acc_drop_pts"], "+.2f"),
            _f(r["speedup_vs_fp32"], ".2f"),
            bool(r["pareto_measured"]),
        ]
        for _, r in front.iterrows()
    ]
    header = [
        "label", "trial", "bits", "proxy", "predicted (ms)", "measured (ms)", "pred. error (%)",
        "weights (KiB)", "accuracy (%)", "acc. drop (pts)", "speedup", "measured front",
    ]
    return [
        "Sorted by latency. *acc. drop* is FP32 accuracy minus the candidate's, in percentage points; "
        "*pred. error* is (predicted − measured) / measured; *measured front* marks candidates no other "
        "Pareto candidate beats on measured latency, accuracy and weight memory at once.\n",
        markdown_table(header, rows, ["l", "r", "l"] + ["r"] * 8 + ["l"]),
    ]


def _layers_section(summary: RunSummary) -> list[str]:
    weight_bits, act_bits = bits_frame(summary)
    labels = list(weight_bits.index)

    def pair(label: str, layer: str) -> str:
        w, a = weight_bits.at[label, layer], act_bits.at[label, layer]
        return MISSING if _is_missing(w) else f"W{w:.0f}A{a:.0f}"

    rows = [
        [layer, summary.layer_macs.get(layer), summary.layer_params.get(layer)]
        + [pair(label, layer) for label in labels]
        for layer in summary.layers
    ]
    header = ["layer", "MACs", "params", *labels]
    return [markdown_table(header, rows, ["l", "r", "r"] + ["l"] * len(labels))]


def render_markdown(summary: RunSummary, frame: pd.DataFrame | None = None) -> str:
    """The text of ``report.md``; links ``pareto.png`` and ``bits.png`` beside it.

    Args:
        summary: The run summary.
        frame: :func:`~mpsearch.report.tables.candidates_frame` of the summary, computed if None.

    Returns:
        Markdown text.
    """
    frame = candidates_frame(summary) if frame is None else frame
    pareto = frame[frame["kind"] == "pareto"]
    measured = bool(pareto["measured_latency_ms"].notna().any())
    notes = list(summary.notes)
    if not measured:
        notes.append("No Pareto candidate was measured: latencies in the plot are cost-table predictions.")

    total_macs = sum(summary.layer_macs.get(n, 0) for n in summary.layers)
    total_params = sum(summary.layer_params.get(n, 0) for n in summary.layers)
    out: list[str] = [
        f"# mpsearch report: {summary.model} on {summary.hw_profile}\n",
        f"- **model**: {summary.model} ({len(summary.layers)} quantizable layers, "
        f"{total_macs:,} MACs, {total_params:,} parameters)",
        f"- **hardware profile**: {summary.hw_profile}",
        f"- **measured on**: {summary.device}",
        f"- **run directory**: `{summary.run_dir}`\n",
        "## Baselines\n",
        *_baselines_section(frame),
        "## Pareto front\n",
        *_pareto_section(frame),
        "![Accuracy versus latency](pareto.png)\n",
        "![Bit-widths along the front](bits.png)\n",
        "## Layers\n",
        *_layers_section(summary),
    ]
    if summary.layer_latency_ms is not None:
        table = summary.layer_latency_ms.copy()
        table.index.name = table.index.name or "layer"
        out += ["## Predicted kernel latency per layer (ms)\n", frame_to_markdown(table, ".4f")]

    timings = [[stage, f"{secs:.1f}"] for stage, secs in summary.timings_s.items()]
    # A sum, not a measured total: stages may overlap or leave gaps.
    timings.append(["**sum**", f"{sum(summary.timings_s.values()):.1f}"])
    out += ["## Timings\n", markdown_table(["stage", "wall time (s)"], timings, ["l", "r"])]
    out += ["## Versions\n", markdown_table(["package", "version"], sorted(summary.versions.items()))]
    out += ["## Notes\n", "\n".join(f"- {n}" for n in notes) + "\n" if notes else "None.\n"]
    config = yaml.safe_dump(_plain(summary.config), sort_keys=False, default_flow_style=False)
    out += ["## Config\n", "```yaml\n" + config + "```\n"]
    return "\n".join(out)
