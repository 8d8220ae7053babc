"""Small HTML builders for the report: escaped tables, sections, embedded pictures, and the page's inline stylesheet."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from html import escape

__all__ = ["STYLE", "data_image", "note", "section", "table"]

STYLE = """
body { margin: 0; background: #f4f5f7; color: #1d232a; font: 15px/1.45 system-ui, -apple-system, "Segoe UI",
       Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 0 0 2px; }
h2 { font-size: 19px; margin: 0 0 10px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
.sub { color: #5b6570; margin: 0 0 18px; word-break: break-all; }
section { background: #ffffff; border: 1px solid #dde1e6; border-radius: 8px; padding: 16px 20px; margin: 0 0 18px; }
table { border-collapse: collapse; margin: 4px 0; }
th, td { text-align: left; padding: 4px 14px 4px 0; border-bottom: 1px solid #edf0f2; vertical-align: top; }
th { color: #5b6570; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font: 13px ui-monospace, "DejaVu Sans Mono", monospace; color: #5b6570; }
.note { color: #8a5a00; background: #fff7e0; border-left: 4px solid #f0b429; padding: 6px 10px; margin: 6px 0; }
.chart svg, .picture img { max-width: 100%; height: auto; display: block; }
pre { background: #f7f8fa; border: 1px solid #e3e6ea; padding: 10px 12px; overflow-x: auto;
      font: 12.5px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; }
"""


def table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool] | None = None) -> str:
    """An HTML table of text cells (all escaped); columns flagged in `numeric` align right."""
    flags = list(numeric or [False] * len(header))
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if flags[i] else ""}>{escape(cell)}</td>' for i, cell in enumerate(row))
        + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def note(text: str) -> str:
    """A highlighted line saying what is missing or odd (escaped)."""
    return f'<p class="note">{escape(text)}</p>'


def section(title: str, body: str, anchor: str) -> str:
    """A titled card; `body` is HTML already."""
    return f'<section id="{escape(anchor)}"><h2>{escape(title)}</h2>{body}</section>'


def data_image(png: bytes, alt: str) -> str:
    """An `<img>` holding the PNG itself (base64 data URL), so the page needs no other file."""
    encoded = base64.b64encode(png).decode("ascii")
    return f'<div class="picture"><img alt="{escape(alt)}" src="data:image/png;base64,{encoded}"></div>'
