"""HTML building blocks of the report: escaping, tables, badges, callouts, embedded figures.

Every piece of text that reaches the page goes through :func:`esc` here (labels from the run's JSON may hold
``<``, ``&``, quotes, ``$`` or any unicode); nothing in this module knows about sections or result files.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = ["esc", "table", "kv_table", "badge", "callout", "figure", "is_numeric"]


def esc(value: Any) -> str:
    """HTML-escape any value's string form."""
    return html.escape(str(value), quote=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, id: str | None = None,
          cls: str = "data", keys: Sequence[str | None] | None = None) -> str:
    """A table; every cell is escaped and numeric-looking cells are right-aligned. ``keys`` (per column)
    adds ``data-key`` attributes to that column's cells."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for j, cell in enumerate(row):
            key = keys[j] if keys is not None and j < len(keys) else None
            attrs = f' data-key="{esc(key)}"' if key else ""
            num_attr = ' class="num"' if is_numeric(str(cell)) else ""
            cells.append(f"<td{num_attr}{attrs}>{esc(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    id_attr = f' id="{esc(id)}"' if id else ""
    return f'<table class="{esc(cls)}"{id_attr}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def kv_table(rows: Sequence[tuple[str, Any, str | None]], tid: str) -> str:
    """A two-column name/value table; ``None`` values read ``n/a``; a row's third item is its ``data-key``."""
    cells = []
    for name, value, key in rows:
        attr = f' data-key="{esc(key)}"' if key else ""
        cells.append(f"<tr><th>{esc(name)}</th><td{attr}>{esc('n/a' if value is None else value)}</td></tr>")
    return f'<table class="kv" id="{esc(tid)}"><tbody>{"".join(cells)}</tbody></table>'


def is_numeric(text: str) -> bool:
    """Whether a cell reads as a number (``0.5``, ``3.1%``, ``1 [0, 2]``, ``n/a``): right-aligned."""
    t = text.strip().replace("%", "").replace("\u2212", "-")
    if not t or t == "n/a":
        return t == "n/a"
    head = t.split(" [", 1)[0]
    try:
        float(head)
        return True
    except ValueError:
        return False


def badge(verdict: str) -> str:
    return f'<span class="badge verdict-{esc(verdict.replace(" ", "-"))}">{esc(verdict)}</span>'


def callout(text_html: str, cls: str = "") -> str:
    return f'<div class="callout {esc(cls)}">{text_html}</div>'


def figure(path: Path | None, name: str, relative: str, caption: str) -> str:
    """An embedded PNG (data URI) with a caption, or a note where the file (``path``) is absent."""
    if path is None:
        return (f'<p class="note figure-missing" data-name="{esc(name)}">Figure <code>{esc(relative)}</code> '
                "was not found in the run directory.</p>")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure id="fig-{esc(name)}"><img class="figure" data-name="{esc(name)}" data-path="{esc(relative)}" '
            f'alt="{esc(caption)}" src="data:image/png;base64,{data}"><figcaption>{esc(caption)}</figcaption></figure>')
