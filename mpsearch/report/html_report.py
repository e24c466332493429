"""``report.html``: the report's blocks as one self-contained HTML5 page, plots embedded as base64 PNG.

The page loads nothing: a Content-Security-Policy allows only inline styles and ``data:`` images, so a
browser refuses (and logs) any external reference that slipped in.
"""

from __future__ import annotations

import base64
import html
import re
import struct
from collections.abc import Iterable, Mapping, Sequence

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
)
from mpsearch.report.tables import ReportError, RunSummary

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d8dce4; --head: #eef1f6; --stripe: #f7f8fb; --accent: #2a5db0; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header, main, footer { max-width: 1200px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 20px; border-bottom: 1px solid var(--line); }
h1 { font-size: 1.6em; margin: 0.3em 0; }
h2 { font-size: 1.25em; margin: 1.6em 0 0.5em; padding-bottom: 0.2em; border-bottom: 1px solid var(--line); }
nav { max-width: 1200px; margin: 0 auto; padding: 8px 24px; font-size: 0.9em; }
nav a { color: var(--accent); text-decoration: none; margin-right: 1em; white-space: nowrap; }
nav a:hover { text-decoration: underline; }
p, ul { max-width: 75em; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 0.9em;
  background: var(--stripe); padding: 0 0.25em; border-radius: 3px; }
pre { background: var(--stripe); border: 1px solid var(--line); padding: 12px; overflow-x: auto; }
pre code { background: none; padding: 0; }
.scroll { overflow-x: auto; margin: 0.8em 0; }
table { border-collapse: collapse; font-size: 0.88em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: var(--head); position: sticky; top: 0; }
tbody tr:nth-child(even) { background: var(--stripe); }
td.r, th.r { text-align: right; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 0.9em; }
footer { color: var(--muted); font-size: 0.85em; margin-top: 2em; padding-bottom: 2em;
  border-top: 1px solid var(--line); padding-top: 0.6em; }
"""

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_EM = re.compile(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])")


def inline(text: str) -> str:
    """Escape ``text`` for HTML and turn ``**bold**``, ``*emphasis*`` and ```code``` into tags."""
    parts = _CODE.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # inside backticks: literal
            out.append(f"<code>{html.escape(part)}</code>")
        else:
            esc = html.escape(part)
            esc = _BOLD.sub(r"<strong>\1</strong>", esc)
            out.append(_EM.sub(r"<em>\1</em>", esc))
    return "".join(out)


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ReportError("plot is not a PNG image; redraw the report")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _table(block: Table) -> str:
    align = list(block.align) if block.align else ["l"] * len(block.header)
    if len(align) != len(block.header):
        raise ReportError(f"align has {len(align)} entries for {len(block.header)} columns")

    def cls(i: int) -> str:
        return ' class="r"' if align[i] == "r" else ""

    head = "".join(f"<th{cls(i)}>{inline(cell_text(h))}</th>" for i, h in enumerate(block.header))
    body = []
    for row in block.rows:
        if len(row) != len(block.header):
            raise ReportError(f"row has {len(row)} cells for {len(block.header)} columns")
        body.append("<tr>" + "".join(f"<td{cls(i)}>{inline(cell_text(c))}</td>" for i, c in enumerate(row))
                    + "</tr>")
    return (f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(body) + "\n</tbody>\n</table></div>")


def _image(block: Image, images: Mapping[str, bytes]) -> str:
    data = images.get(block.file)
    if data is None:
        raise ReportError(f"the report shows {block.file} but its image was not given; redraw the report")
    width, height = png_size(data)
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    alt = html.escape(block.alt, quote=True)
    return (f'<figure><img src="{src}" alt="{alt}" width="{width}" height="{height}" '
            f'data-file="{html.escape(block.file, quote=True)}">'
            f"<figcaption>{alt} (<code>{html.escape(block.file)}</code>)</figcaption></figure>")


def blocks_to_html(blocks: Iterable[Block], images: Mapping[str, bytes], footer: str = "") -> str:
    """Render report blocks as a complete HTML5 document.

    Args:
        blocks: From :func:`~mpsearch.report.document.build_document`; the level-1 heading is the title.
        images: PNG bytes for every :class:`~mpsearch.report.document.Image` block, keyed by file name.
        footer: Plain text for the page footer.

    Returns:
        The page.
    """
    blocks = list(blocks)
    title = next((b.text for b in blocks if isinstance(b, Heading) and b.level == 1), "mpsearch report")
    used: set[str] = set()
    header: list[str] = []
    sections: list[tuple[str, str, list[str]]] = []  # (id, heading, body parts)
    for block in blocks:
        target = sections[-1][2] if sections else header
        if isinstance(block, Heading):
            if block.level == 1:
                header.append(f"<h1>{inline(block.text)}</h1>")
            elif block.level == 2:
                sections.append((_slug(block.text, used), block.text, []))
            else:
                target.append(f"<h{block.level}>{inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            target.append(f"<p>{inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            target.append("<ul>\n" + "\n".join(f"<li>{inline(i)}</li>" for i in block.items) + "\n</ul>")
        elif isinstance(block, Table):
            target.append(_table(block))
        elif isinstance(block, Image):
            target.append(_image(block, images))
        elif isinstance(block, Code):
            lang = f' class="language-{html.escape(block.lang, quote=True)}"' if block.lang else ""
            target.append(f"<pre><code{lang}>{html.escape(block.text.rstrip())}</code></pre>")
        else:  # pragma: no cover - a new block type without a renderer
            raise ReportError(f"no HTML renderer for {type(block).__name__}")

    nav = " ".join(f'<a href="#{sid}">{html.escape(text)}</a>' for sid, text, _ in sections)
    body = "\n".join(
        f'<section id="{sid}">\n<h2>{inline(text)}</h2>\n' + "\n".join(parts) + "\n</section>"
        for sid, text, parts in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<header>\n" + "\n".join(header) + "\n</header>\n"
        f'<nav aria-label="sections">{nav}</nav>\n'
        f"<main>\n{body}\n</main>\n"
        f"<footer>{html.escape(footer)}</footer>\n"
        "</body>\n</html>\n"
    )


def render_html(
    summary: RunSummary, images: Mapping[str, bytes], frame: pd.DataFrame | None = None,
    figures: Sequence[str] | None = None,
) -> str:
    """The text of ``report.html``, every plot in ``figures`` embedded from ``images``.

    Args:
        summary: The run summary.
        images: PNG bytes keyed by plot file name.
        frame: :func:`~mpsearch.report.tables.candidates_frame` of the summary, computed if None.
        figures: Plot files to show; the keys of ``images`` if None.

    Returns:
        The HTML page.
    """
    figures = list(images) if figures is None else figures
    footer = ("Written by mpsearch from summary.json in the run folder; "
              "`mpsearch-report <run dir>` rebuilds it without recomputing.")
    return blocks_to_html(build_document(summary, frame, figures), images, footer.replace("`", ""))
