"""``report.md``: a tiny markdown table formatter and the markdown rendering of the report's blocks."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import pandas as pd

from mpsearch.report.document import (
    Block,
    Bullets,
    Code,
    Heading,
    Image,
    Paragraph,
    Table,
    build_document,
    cell_text,
    frame_table,
)
from mpsearch.report.tables import ReportError, RunSummary

logger = logging.getLogger(__name__)


def _cell(value: object) -> str:
    return cell_text(value).replace("|", "\\|")


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
    align = list(align) if align else ["l"] * len(header)
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
    table = frame_table(frame, floatfmt, index)
    return markdown_table(table.header, table.rows, table.align)


def blocks_to_markdown(blocks: Iterable[Block]) -> str:
    """Render report blocks as markdown; blocks are separated by one blank line."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append("#" * block.level + " " + block.text + "\n")
        elif isinstance(block, Paragraph):
            out.append(block.text + "\n")
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {item}" for item in block.items) + "\n")
        elif isinstance(block, Table):
            out.append(markdown_table(block.header, block.rows, block.align))
        elif isinstance(block, Image):
            out.append(f"![{block.alt}]({block.file})\n")
        elif isinstance(block, Code):
            out.append(f"```{block.lang}\n{block.text.rstrip()}\n```\n")
        else:  # pragma: no cover - a new block type without a renderer
            raise ReportError(f"no markdown renderer for {type(block).__name__}")
    return "\n".join(out)


def render_markdown(
    summary: RunSummary, frame: pd.DataFrame | None = None, figures: Sequence[str] | None = None
) -> str:
    """The text of ``report.md``; links the plot files beside it.

    Args:
        summary: The run summary.
        frame: :func:`~mpsearch.report.tables.candidates_frame` of the summary, computed if None.
        figures: Plot files written beside the report; those with data if None.

    Returns:
        Markdown text.
    """
    return blocks_to_markdown(build_document(summary, frame, figures))
