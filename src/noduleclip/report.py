"""One self-contained HTML report (inline CSS, figures as data URIs, no JavaScript) and its JSON twin.

    from noduleclip.report import Figure, Section, Table, Text, write_report
    html, js = write_report("out/report.html", "External evaluation", [
        Section("Malignancy", [Text("..."), Table(["set", "AUROC"], [["nodules", 0.91]], bold={(0, 1)}),
                               Figure("out/roc.png", "ROC")]),
    ], data={"auroc": 0.91})

The JSON beside the HTML (same stem, .json) holds `data` exactly as given (after `jsonable`: numpy
values become plain numbers, NaN and inf become null), for programs; the HTML is for people.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from noduleclip.atomic import atomic_path, jsonable
from noduleclip.errors import InputError
from noduleclip.version import __version__

MISSING = "\u2013"  # en dash for a missing value
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
SHORT_CELL = 24  # text cells up to this many characters do not wrap (ids, intervals); longer ones do


@dataclass
class Text:
    """A paragraph of plain text (escaped; blank lines are not special)."""

    text: str


@dataclass
class Table:
    """A table; floats print with 3 decimals, None/NaN as a dash; `bold` marks (row, col) cells."""

    columns: list[str]
    rows: list[list]
    caption: str = ""
    bold: set[tuple[int, int]] = field(default_factory=set)


@dataclass
class Figure:
    """A PNG file, embedded in the page as base64 and scaled to the text width."""

    image: str | Path
    caption: str = ""


@dataclass
class Section:
    """A titled part of the report: paragraphs, tables and figures in order."""

    title: str
    blocks: list[Text | Table | Figure]


STYLE = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; padding: 1.5rem 1rem 3rem; background: #fff; color: #1d1d1f;
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 62rem; margin: 0 auto; overflow-wrap: anywhere; }
h1 { font-size: 1.7rem; margin: 0 0 .2rem; line-height: 1.25; }
.subtitle { color: #555; margin: 0 0 1rem; }
h2 { font-size: 1.3rem; margin: 2.2rem 0 .6rem; padding-bottom: .2rem; border-bottom: 1px solid #ddd; }
nav ol { margin: .3rem 0 1rem; padding-left: 1.4rem; columns: 2 16rem; }
nav a, nav a:visited { color: #0b57d0; }
p { margin: .6rem 0; }
.table-box { max-width: 100%; overflow-x: auto; margin: 1rem 0; border: 1px solid #ddd; border-radius: 4px; }
table { border-collapse: collapse; font-size: .9rem; font-variant-numeric: tabular-nums; min-width: 100%; }
caption { caption-side: top; text-align: left; padding: .45rem .6rem; color: #444; background: #f6f6f6;
  border-bottom: 1px solid #ddd; }
th, td { padding: .3rem .6rem; border-bottom: 1px solid #eee; text-align: left; vertical-align: top;
  overflow-wrap: normal; }
th { background: #fafafa; font-weight: 600; vertical-align: bottom; }
th.num { text-align: right; }
td.num, td.short { white-space: nowrap; }
td.num { text-align: right; }
td.mark { font-weight: 700; background: #fff4d6; }
tbody tr:last-child td { border-bottom: none; }
figure { margin: 1.2rem 0; max-width: 100%; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: .9rem; margin-top: .35rem; }
footer { margin-top: 3rem; color: #777; font-size: .8rem; }
"""


def format_cell(value) -> tuple[str, bool]:
    """(text of a table cell, whether it is a number): floats to 3 decimals, None/NaN to a dash; text as it is."""
    if value is None:
        return MISSING, False
    if isinstance(value, (bool, np.bool_)):
        return ("yes" if value else "no"), False
    if isinstance(value, (int, np.integer)):
        return str(int(value)), True
    if isinstance(value, (float, np.floating)):
        return (f"{float(value):.3f}" if math.isfinite(value) else MISSING), True
    text = str(value)
    return text, NUMBER.fullmatch(text.strip()) is not None  # e.g. "5.7e-07": aligned as a number, kept as given


def slug(title: str, taken: set[str]) -> str:
    """An HTML id for a section title, unique among `taken` (which it joins)."""
    base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    return name


def render_table(table: Table) -> str:
    """A table inside its own horizontally scrolling box."""
    width = len(table.columns)
    for i, row in enumerate(table.rows):
        if len(row) != width:
            raise InputError(f"table {table.caption or table.columns!r}: row {i} has {len(row)} cells but there are "
                             f"{width} columns; give one cell per column")
    formatted = [[format_cell(value) for value in row] for row in table.rows]
    numeric_columns = [bool(formatted) and all(numeric or text == MISSING for text, numeric in column)
                       for column in zip(*formatted, strict=True)] if formatted else [False] * width
    head = "".join(("<th scope=\"col\" class=\"num\">" if numeric else "<th scope=\"col\">") + html.escape(str(c))
                   + "</th>" for c, numeric in zip(table.columns, numeric_columns, strict=True))
    body = []
    for i, row in enumerate(formatted):
        cells = []
        for j, (text, numeric) in enumerate(row):
            numeric = numeric or (text == MISSING and numeric_columns[j])
            short = not numeric and len(text) <= SHORT_CELL
            flags = (("num", numeric), ("short", short), ("mark", (i, j) in table.bold))
            classes = " ".join(name for name, on in flags if on)
            opening = f"<td class=\"{classes}\">" if classes else "<td>"
            cells.append(f"{opening}{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    return (f"<div class=\"table-box\"><table>{caption}<thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def render_figure(figure: Figure) -> str:
    """A PNG embedded as a data URI, with its caption."""
    path = Path(figure.image)
    if not path.is_file():
        raise InputError(f"figure {path} does not exist; write the PNG before the report")
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise InputError(f"figure {path} is not a PNG file; save figures as PNG for the report")
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    alt = html.escape(figure.caption or path.stem, quote=True)
    caption = f"<figcaption>{html.escape(figure.caption)}</figcaption>" if figure.caption else ""
    return f"<figure><img src=\"{uri}\" alt=\"{alt}\">{caption}</figure>"


def render_block(block) -> str:
    if isinstance(block, Text):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Table):
        return render_table(block)
    if isinstance(block, Figure):
        return render_figure(block)
    raise TypeError(f"a report block must be Text, Table or Figure, not {type(block).__name__}")


def render_html(title: str, sections: list[Section], subtitle: str = "") -> str:
    """The report's HTML text: title, contents, sections, a footer."""
    taken: set[str] = set()
    ids = [slug(s.title, taken) for s in sections]
    contents = "".join(f"<li><a href=\"#{i}\">{html.escape(s.title)}</a></li>"
                       for i, s in zip(ids, sections, strict=True))
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if subtitle:
        parts.append(f"<p class=\"subtitle\">{html.escape(subtitle)}</p>")
    if len(sections) > 1:
        parts.append(f"<nav aria-label=\"contents\"><ol>{contents}</ol></nav>")
    for section_id, section in zip(ids, sections, strict=True):
        blocks = "\n".join(render_block(b) for b in section.blocks)
        parts.append(f"<section id=\"{section_id}\"><h2>{html.escape(section.title)}</h2>\n{blocks}</section>")
    parts.append(f"<footer>noduleclip {html.escape(__version__)}</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
            "<body><main>\n" + "\n".join(parts) + "\n</main></body></html>\n")


def write_report(path: str | os.PathLike, title: str, sections: list[Section], data: dict,
                 subtitle: str = "") -> tuple[Path, Path]:
    """Write one self-contained HTML report and a machine-readable JSON (same stem, .json) beside it, atomically;
    return both paths."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"report path {path} does not end in .html; name the report e.g. report.html")
    json_path = path.with_suffix(".json")
    try:
        data_text = json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise InputError(f"the report data cannot be written as JSON ({exc}); pass numbers, strings, lists "
                         "and dicts") from None
    page = render_html(title, sections, subtitle)  # every figure is read before anything is written
    with atomic_path(json_path) as json_tmp, atomic_path(path) as html_tmp:
        json_tmp.write_text(data_text)
        html_tmp.write_text(page, encoding="utf-8")
    return path, json_path
