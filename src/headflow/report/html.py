"""The self-contained HTML report of a study directory: ``write_report(run_dir) -> run_dir/report.html``.

The page has no external resource: figures are PNG data URIs, the CSS is inline, there is no script
and no font download, so it opens offline and can be mailed as one file. Every number on it is read
from the run's JSON files (see :mod:`headflow.report.run`); the text around them is fixed. Stable
hooks for tests and tooling:

* ``<section id="claims|model|attribution|lds|validation|attention|flow|objects|semantics">`` with
  ``class="section"`` plus ``missing`` and ``data-status="missing"`` where its analysis was not run;
* ``<tr data-claim="C1" data-verdict="agrees">`` rows in ``<table id="claims-table">``;
* ``<img class="figure" data-name="attribution_heatmap" data-path="figures/attribution_heatmap.png">``;
* ``<td data-key="clean_accuracy">`` cells for headline numbers.
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from .run import FIGURES, RunView, read_run

__all__ = ["write_report", "render_report", "SECTION_IDS"]

#: Section ids, in page order.
SECTION_IDS = ("claims", "model", "attribution", "lds", "validation", "attention", "flow", "objects", "semantics")
SECTION_TITLES = {
    "claims": "Claims of the paper vs this run",
    "model": "Model and data",
    "attribution": "Head attribution",
    "lds": "Held-out check (linear datamodeling score)",
    "validation": "Completeness and faithfulness",
    "attention": "Attribution vs attention weight",
    "flow": "Token-level flow (attention knockout)",
    "objects": "Object and background image tokens",
    "semantics": "Semantic class vs appearance",
    "other-figures": "Other figures",
}

MISSING_CLASS = ' class="missing"'

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#ffffff; --panel:#f6f8fa;
        --agree:#1a7f37; --disagree:#cf222e; --inconc:#9a6700; --notrun:#6e7781; }
* { box-sizing: border-box; }
body { margin:0; padding:0 1.5rem 3rem; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;
       color:var(--fg); background:var(--bg); max-width:1200px; margin-inline:auto; }
header { padding:1.2rem 0 0.6rem; border-bottom:2px solid var(--line); }
h1 { font-size:1.6rem; margin:0 0 0.3rem; }
h2 { font-size:1.25rem; margin:2rem 0 0.6rem; padding-bottom:0.25rem; border-bottom:1px solid var(--line); }
h3 { font-size:1.05rem; margin:1.2rem 0 0.4rem; }
p, li { max-width:75ch; }
.muted, figcaption, .note { color:var(--muted); font-size:0.9rem; }
nav ul { list-style:none; padding:0; margin:0.5rem 0; display:flex; flex-wrap:wrap; gap:0.3rem 1rem; }
nav a { color:#0969da; text-decoration:none; font-size:0.92rem; }
nav a.missing { color:var(--notrun); text-decoration:line-through; }
table { border-collapse:collapse; margin:0.5rem 0 1rem; font-size:0.9rem; }
th, td { border:1px solid var(--line); padding:0.3rem 0.55rem; text-align:left; vertical-align:top; }
th { background:var(--panel); font-weight:600; }
table.kv th { width:17rem; }
td.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
table.claims td:nth-child(3) { min-width:22rem; }
table.claims ul { margin:0; padding-left:1.1rem; }
.badge { background:var(--notrun); display:inline-block; padding:0.1rem 0.55rem; border-radius:1rem; color:#fff;
         font-weight:600; font-size:0.85rem; white-space:nowrap; }
.verdict-agrees { background:var(--agree); } .verdict-disagrees { background:var(--disagree); }
.verdict-inconclusive { background:var(--inconc); } .verdict-not-run { background:var(--notrun); }
figure { margin:0.6rem 0 1.2rem; }
img.figure { max-width:100%; height:auto; border:1px solid var(--line); background:#fff; }
.callout { border-left:4px solid var(--line); background:var(--panel); padding:0.5rem 0.8rem; margin:0.6rem 0; }
.callout.warn { border-color:var(--inconc); }
section.missing .callout { border-color:var(--notrun); }
pre { background:var(--panel); padding:0.7rem; overflow-x:auto; font-size:0.82rem; white-space:pre-wrap; }
"""


# ----------------------------------------------------------------------------------------------
# primitives


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
            text = esc(cell)
            num = _numeric(str(cell))
            num_attr = ' class="num"' if num else ""
            cells.append(f"<td{num_attr}{attrs}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    id_attr = f' id="{esc(id)}"' if id else ""
    return f'<table class="{esc(cls)}"{id_attr}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _numeric(text: str) -> bool:
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


def figure(view: RunView, name: str, relative: str, caption: str) -> str:
    """An embedded PNG (data URI) with a caption, or a note where the file is absent."""
    path = view.figure(relative)
    if path is None:
        return (f'<p class="note figure-missing" data-name="{esc(name)}">Figure <code>{esc(relative)}</code> '
                "was not found in the run directory.</p>")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure id="fig-{esc(name)}"><img class="figure" data-name="{esc(name)}" data-path="{esc(relative)}" '
            f'alt="{esc(caption)}" src="data:image/png;base64,{data}"><figcaption>{esc(caption)}</figcaption></figure>')


def section(sid: str, body: str, *, missing: str | None = None) -> str:
    """``<section id=sid>`` with its title; ``missing`` (why) marks it as not run."""
    title = SECTION_TITLES.get(sid, sid)
    if missing is not None:
        return (f'<section id="{esc(sid)}" class="section missing" data-status="missing"><h2>{esc(title)}</h2>'
                + callout(f"<strong>Not in this run.</strong> {missing}") + "</section>")
    return f'<section id="{esc(sid)}" class="section" data-status="present"><h2>{esc(title)}</h2>{body}</section>'


def section_figures(view: RunView, sid: str, captions: dict[str, str]) -> str:
    return "".join(figure(view, name, rel, captions.get(name, name)) for name, rel in FIGURES.get(sid, ()))


# ----------------------------------------------------------------------------------------------
# page


def render_report(run_dir: str | Path) -> str:
    """The report of ``run_dir`` as one HTML string (nothing written)."""
    from .sections import BUILDERS, other_figures

    view = read_run(run_dir)
    bodies: list[tuple[str, str, bool]] = []
    for sid in SECTION_IDS:
        body, missing = BUILDERS[sid](view)
        bodies.append((sid, section(sid, body, missing=missing), missing is not None))
    extra = other_figures(view)
    if extra:
        bodies.append(("other-figures", section("other-figures", extra), False))
    nav = "".join(f'<li><a href="#{sid}"{MISSING_CLASS if miss else ""}>{esc(SECTION_TITLES[sid])}</a></li>'
                  for sid, _, miss in bodies)
    missing_ids = [sid for sid, _, miss in bodies if miss]
    header = _header(view, missing_ids)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>headflow report: {esc(_model_name(view))}</title><style>{CSS}</style></head><body>"
            f"{header}<nav id=\"toc\"><ul>{nav}</ul></nav>"
            + "".join(b for _, b, _ in bodies) + "</body></html>\n")


def _model_name(view: RunView) -> str:
    config = view.get("config") or {}
    return str((view.get("study") or {}).get("model") or config.get("model", {}).get("name")
               or config.get("spec", {}).get("model") or "unknown model")


def _header(view: RunView, missing_ids: list[str]) -> str:
    config = view.get("config") or {}
    data = (view.get("study") or {}).get("data") or config.get("spec", {}).get("data", "unknown data")
    parts = [f"<h1>headflow report</h1><p class=\"muted\">Which attention heads carry image information into the "
             f"answer (arXiv 2509.17588). Model <strong>{esc(_model_name(view))}</strong>, data "
             f"<strong>{esc(data)}</strong>, run directory <code>{esc(view.run_dir.resolve().name)}</code>.</p>"]
    if missing_ids:
        names = ", ".join(f'<a href="#{esc(s)}">{esc(SECTION_TITLES[s])}</a>' for s in missing_ids)
        parts.append(callout(f'<span id="missing-sections" data-missing="{esc(" ".join(missing_ids))}">'
                             f"Sections not in this run: {names}.</span>", "warn"))
    for part, error in sorted(view.errors.items()):
        parts.append(callout(f"Could not read the {esc(part)} results: <code>{esc(error)}</code>", "warn"))
    return "<header>" + "".join(parts) + "</header>"


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) and return its path.

    Parameters
    ----------
    run_dir : str or Path
        A study directory (``headflow study --out DIR``) or a plain attribution run; sections whose
        analysis is missing are marked as such.

    Returns
    -------
    Path
        ``run_dir/report.html``.

    Raises
    ------
    HeadflowError
        If ``run_dir`` holds no finished attribution run (no ``summary.json``).

    Examples
    --------
    >>> from headflow.report import write_report
    >>> write_report("runs/demo")  # doctest: +SKIP
    PosixPath('runs/demo/report.html')
    """
    run_dir = Path(run_dir)
    text = render_report(run_dir)
    path = run_dir / "report.html"
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".report.html.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
