"""The self-contained HTML report of a study directory (claims C1–C4, model card, every figure).

``write_report(run_dir)`` reads the JSON files and PNG figures that ``headflow study`` (or any subset of
its steps) wrote into ``run_dir`` and writes ``run_dir/report.html``: one file, figures embedded as data
URIs, no external CSS, script or font. The page is assembled from one table of sections
(:data:`headflow.report.sections.SECTIONS`); sections whose analysis is missing are marked as not run,
and a result file that lacks a key the report reads raises :class:`MissingKeyError` naming file and key.
"""

from __future__ import annotations

from .doc import MissingKeyError
from .html import render_report, write_report
from .sections import SECTION_IDS, SECTIONS

__all__ = ["write_report", "render_report", "SECTION_IDS", "SECTIONS", "MissingKeyError"]
