"""A small document model rendered both as Markdown and as a self-contained HTML page.

The report is built once as a list of :class:`Section` objects, so the
Markdown and the HTML files always hold the same sections, tables and
figures. Text supports two inline marks: ```code``` and ``**bold**``.
The HTML page embeds every figure as a base64 PNG and needs no other file.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from typing import Any

_INLINE_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")


@dataclass
class Paragraph:
    """A paragraph of text with inline marks."""

    text: str


@dataclass
class Subheading:
    """A heading one level below the section title."""

    text: str


@dataclass
class BulletList:
    """An unordered list of text items with inline marks."""

    items: list[str]


@dataclass
class Table:
    """A table of cells. ``None`` and NaN cells are shown as ``n/a``; floats with ``digits`` decimals."""

    header: list[str]
    rows: list[list[Any]]
    caption: str = ""
    digits: int = 4


@dataclass
class Figure:
    """A PNG figure, written to ``figures/<name>.png`` for Markdown and embedded in the HTML page."""

    name: str
    png: bytes
    caption: str


Block = Paragraph | Subheading | BulletList | Table | Figure


@dataclass
class Section:
    """A titled section with its blocks. ``anchor`` is the HTML id and the table-of-contents target."""

    title: str
    anchor: str
    blocks: list[Block] = field(default_factory=list)


def format_cell(value: Any, digits: int = 4) -> str:
    """Format one table cell: floats with fixed decimals, missing values as ``n/a``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def figure_path(figure: Figure) -> str:
    """Return the figure's path relative to the report folder."""
    return f"figures/{figure.name}.png"


def _markdown_cell(value: Any, digits: int) -> str:
    return format_cell(value, digits).replace("|", "\\|").replace("\n", " ")


def _markdown_block(block: Block) -> list[str]:
    if isinstance(block, Paragraph):
        return [block.text, ""]
    if isinstance(block, Subheading):
        return [f"### {block.text}", ""]
    if isinstance(block, BulletList):
        return [f"- {item}" for item in block.items] + [""]
    if isinstance(block, Table):
        lines = [f"*{block.caption}*", ""] if block.caption else []
        lines.append("| " + " | ".join(block.header) + " |")
        lines.append("|" + "---|" * len(block.header))
        lines += ["| " + " | ".join(_markdown_cell(cell, block.digits) for cell in row) + " |"
                  for row in block.rows]
        return lines + [""]
    return [f"![{block.caption}]({figure_path(block)})", "", f"*{block.caption}*", ""]


def render_markdown_document(title: str, sections: list[Section], *, preamble: list[str] | None = None) -> str:
    """Render the document as GitHub-flavoured Markdown with a table of contents."""
    lines = [f"# {title}", ""]
    for paragraph in preamble or []:
        lines += [paragraph, ""]
    lines += ["## Contents", ""]
    lines += [f"{index}. [{section.title}](#{section.anchor})" for index, section in enumerate(sections, 1)]
    lines.append("")
    for section in sections:
        lines += [f'<a id="{section.anchor}"></a>', "", f"## {section.title}", ""]
        for block in section.blocks:
            lines += _markdown_block(block)
    return "\n".join(lines).rstrip("\n") + "\n"


def inline_html(text: str) -> str:
    """Escape text for HTML and turn the inline marks into ``<code>`` and ``<strong>``."""
    escaped = html.escape(text, quote=False)
    escaped = _INLINE_CODE.sub(r"<code>\1</code>", escaped)
    return _BOLD.sub(r"<strong>\1</strong>", escaped)


def _html_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{inline_html(block.text)}</p>"
    if isinstance(block, Subheading):
        return f"<h3>{inline_html(block.text)}</h3>"
    if isinstance(block, BulletList):
        items = "".join(f"<li>{inline_html(item)}</li>" for item in block.items)
        return f"<ul>{items}</ul>"
    if isinstance(block, Table):
        caption = f"<caption>{inline_html(block.caption)}</caption>" if block.caption else ""
        header = "".join(f"<th>{inline_html(cell)}</th>" for cell in block.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{inline_html(format_cell(cell, block.digits))}</td>" for cell in row) + "</tr>"
            for row in block.rows
        )
        return f'<div class="table"><table>{caption}<thead><tr>{header}</tr></thead><tbody>{body}</tbody></table></div>'
    encoded = base64.b64encode(block.png).decode("ascii")
    return (f'<figure id="figure-{html.escape(block.name)}"><img alt="{html.escape(block.caption)}" '
            f'src="data:image/png;base64,{encoded}"><figcaption>{inline_html(block.caption)}</figcaption></figure>')


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1250px;
       color: #1f2328; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
div.table { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.88em; }
caption { text-align: left; font-style: italic; padding: .3em 0; }
th, td { border: 1px solid #d0d7de; padding: .3em .6em; text-align: left; vertical-align: top; }
thead th { background: #f6f8fa; }
tbody tr:nth-child(even) { background: #fafbfc; }
code { background: #f6f8fa; padding: .1em .3em; border-radius: 4px; font-size: 0.92em; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-style: italic; font-size: 0.92em; margin-top: .3em; }
nav ol { columns: 2; }
"""


def render_html_document(title: str, sections: list[Section], *, preamble: list[str] | None = None) -> str:
    """Render the document as one HTML page with inline CSS and base64-embedded figures."""
    contents = "".join(f'<li><a href="#{section.anchor}">{html.escape(section.title)}</a></li>'
                       for section in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f"<p>{inline_html(paragraph)}</p>" for paragraph in preamble or []]
    parts.append(f"<nav><h2>Contents</h2><ol>{contents}</ol></nav>")
    for section in sections:
        parts.append(f'<section id="{section.anchor}"><h2>{html.escape(section.title)}</h2>')
        parts += [_html_block(block) for block in section.blocks]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
