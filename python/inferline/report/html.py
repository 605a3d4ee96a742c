"""The report page: one self-contained HTML file (inline CSS, plots as base64 PNGs).

    page = render("inferline report", subtitle, [Section(...)], tables=[Table(...)])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import List, Optional

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1060px;
       color: #222; }
h1 { font-size: 26px; margin-bottom: 4px; } h2 { font-size: 18px; margin: 28px 0 6px; }
.sub { color: #666; margin-bottom: 18px; } .note { color: #666; font-size: 13px; margin: 4px 0; }
.empty { color: #999; border: 1px dashed #ccc; padding: 18px; text-align: center; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f4f4; }
img { width: 100%; max-width: 1000px; }
"""


@dataclass
class Section:
    title: str
    png: Optional[str]
    """Base64 PNG, or None: the section shows ``empty`` instead."""
    note: str = ""
    empty: str = "no data in this range"


@dataclass
class Table:
    title: str
    header: List[str]
    rows: List[List[str]] = field(default_factory=list)
    note: str = ""


def _table(t: Table) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    note = f'<p class="note">{escape(t.note)}</p>' if t.note else ""
    return f"<h2>{escape(t.title)}</h2><table><tr>{head}</tr>{body}</table>{note}"


def _section(s: Section) -> str:
    if s.png:
        body = f'<img alt="{escape(s.title)}" src="data:image/png;base64,{s.png}">'
    else:
        body = f'<div class="empty">{escape(s.empty)}</div>'
    note = f'<p class="note">{escape(s.note)}</p>' if s.note else ""
    return f"<h2>{escape(s.title)}</h2>{note}{body}"


def render(title: str, subtitle: str, sections: List[Section], tables: List[Table]) -> str:
    parts = [f"<h1>{escape(title)}</h1>", f'<p class="sub">{escape(subtitle)}</p>']
    parts += [_table(t) for t in tables]
    parts += [_section(s) for s in sections]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
