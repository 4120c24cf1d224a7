"""The report page: ``render_report(run_dir)`` assembles it from :data:`~headflow.report.sections.SECTIONS`,
``write_report(run_dir)`` writes it to ``run_dir/report.html``.

The page has no external resource: figures are PNG data URIs, the CSS is inline, there is no script
and no font download, so it opens offline and can be mailed as one file. Every number on it is read
from the run's JSON files (see :mod:`headflow.report.run`); the text around them is fixed. This module
knows no section: it walks the table, marks a section missing where a file it ``reads`` is absent (or its
builder says so), embeds the entry's figures, then the builder's body. Stable hooks for tests and tooling:

* ``<section id="claims|model|attribution|lds|validation|attention|flow|objects|semantics">`` with
  ``class="section"`` plus ``missing`` and ``data-status="missing"`` where its analysis was not run;
* ``<tr data-claim="C1" data-verdict="agrees">`` rows in ``<table id="claims-table">``;
* ``<img class="figure" data-name="attribution_heatmap" data-path="figures/attribution_heatmap.png">``;
* ``<td data-key="clean_accuracy">`` cells for headline numbers.
"""

from __future__ import annotations

from pathlib import Path

from ..store import atomic_write
from .markup import callout, esc, figure
from .run import RunView, read_run
from .sections import SECTION_IDS, SECTIONS, Built, Inputs, Section, missing_note

__all__ = ["write_report", "render_report", "SECTION_IDS"]

#: The page's last section, not in the table: figures of the run that no section lists.
OTHER_FIGURES = ("other-figures", "Other figures")

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
# page


def section_html(sid: str, title: str, body: str, *, missing: str | None = None) -> str:
    """``<section id=sid>`` with its title; ``missing`` (why, HTML) marks it as not run."""
    if missing is not None:
        return (f'<section id="{esc(sid)}" class="section missing" data-status="missing"><h2>{esc(title)}</h2>'
                + callout(f"<strong>Not in this run.</strong> {missing}") + "</section>")
    return f'<section id="{esc(sid)}" class="section" data-status="present"><h2>{esc(title)}</h2>{body}</section>'


def build_section(view: RunView, entry: Section) -> tuple[str, str | None]:
    """``(body_html, None)`` for a section that is in the run, ``("", why)`` for one that is not.

    Raises :class:`~headflow.report.doc.MissingKeyError` where a file the section reads lacks a key.
    """
    absent = [source for source in entry.reads if not view.has(source)]
    if absent:
        return "", missing_note(absent[0])
    built: Built = entry.build(Inputs(view, entry))
    if built.missing is not None:
        return "", built.missing
    extra = set(built.captions) - {f.name for f in entry.figures}
    if extra:
        raise LookupError(f"report section {entry.id!r} captions figures its SECTIONS entry does not list: "
                          f"{sorted(extra)}")
    figures = "".join(figure(view.figure(f.path), f.name, f.path, built.captions[f.name]) for f in entry.figures)
    return figures + built.html, None


def other_figures(view: RunView, shown: set[str]) -> str:
    """Figures present in the run directory that no rendered section showed (so none is silently left out)."""
    return "".join(figure(view.figure(rel), rel.rsplit("/", 1)[-1].removesuffix(".png"), rel, rel)
                   for rel in sorted(view.figures) if rel not in shown)


def render_report(run_dir: str | Path) -> str:
    """The report of ``run_dir`` as one HTML string (nothing written).

    Raises
    ------
    HeadflowError
        If ``run_dir`` holds no finished attribution run, or (as
        :class:`~headflow.report.doc.MissingKeyError`) a result file lacks a key a section reads.
    """
    view = read_run(run_dir)
    parts: list[tuple[str, str, str, bool]] = []  # id, title, html, missing
    shown: set[str] = set()
    for entry in SECTIONS:
        body, missing = build_section(view, entry)
        parts.append((entry.id, entry.title, section_html(entry.id, entry.title, body, missing=missing),
                      missing is not None))
        if missing is None:
            shown |= {f.path for f in entry.figures}
    extra = other_figures(view, shown)
    if extra:
        sid, title = OTHER_FIGURES
        parts.append((sid, title, section_html(sid, title, extra), False))
    nav = "".join(f'<li><a href="#{esc(sid)}"{MISSING_CLASS if miss else ""}>{esc(title)}</a></li>'
                  for sid, title, _, miss in parts)
    missing_ids = [(sid, title) for sid, title, _, miss in parts if miss]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>headflow report: {esc(model_name(view))}</title><style>{CSS}</style></head><body>"
            f"{header(view, missing_ids)}<nav id=\"toc\"><ul>{nav}</ul></nav>"
            + "".join(html for _, _, html, _ in parts) + "</body></html>\n")


def model_name(view: RunView) -> str:
    """The model's name: ``study.json`` ``model``, else ``config.json`` ``model.name`` (both optional files)."""
    study, config = view.optional("study"), view.optional("config")
    if study is not None:
        return str(study["model"])
    return str(config["model"]["name"]) if config is not None else "unknown model"


def data_name(view: RunView) -> str:
    """The data spec: ``study.json`` ``data``, else ``config.json`` ``spec.data.spec`` (both optional files)."""
    study, config = view.optional("study"), view.optional("config")
    if study is not None:
        return str(study["data"])
    return str(config["spec"]["data"]["spec"]) if config is not None else "unknown data"


def header(view: RunView, missing: list[tuple[str, str]]) -> str:
    parts = [f"<h1>headflow report</h1><p class=\"muted\">Which attention heads carry image information into the "
             f"answer (arXiv 2509.17588). Model <strong>{esc(model_name(view))}</strong>, data "
             f"<strong>{esc(data_name(view))}</strong>, run directory "
             f"<code>{esc(view.run_dir.resolve().name)}</code>.</p>"]
    if missing:
        names = ", ".join(f'<a href="#{esc(sid)}">{esc(title)}</a>' for sid, title in missing)
        ids = " ".join(sid for sid, _ in missing)
        parts.append(callout(f'<span id="missing-sections" data-missing="{esc(ids)}">'
                             f"Sections not in this run: {names}.</span>", "warn"))
    for part, error in sorted(view.errors.items()):
        parts.append(callout(f"Could not read the {esc(part)} results: <code>{esc(error)}</code>", "warn"))
    return "<header>" + "".join(parts) + "</header>"


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (atomically, :func:`headflow.store.atomic_write`) and return its path.

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
        If ``run_dir`` holds no finished attribution run (no ``summary.json``), or (as
        :class:`~headflow.report.doc.MissingKeyError`, also a ``KeyError``) a result file lacks a key the
        report reads; nothing is written then.

    Examples
    --------
    >>> from headflow.report import write_report
    >>> write_report("runs/demo")  # doctest: +SKIP
    PosixPath('runs/demo/report.html')
    """
    run_dir = Path(run_dir)
    text = render_report(run_dir)
    path = run_dir / "report.html"

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    atomic_write(path, write)
    return path
