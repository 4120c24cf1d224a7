"""The self-contained HTML report of a study directory (claims C1–C4, model card, every figure).

``write_report(run_dir)`` reads the JSON files and PNG figures that ``headflow study`` (or any subset of
its steps) wrote into ``run_dir`` and writes ``run_dir/report.html``: one file, figures embedded as data
URIs, no external CSS, script or font. Sections whose analysis is missing are marked as not run.
"""

from __future__ import annotations

from .html import SECTION_IDS, render_report, write_report

__all__ = ["write_report", "render_report", "SECTION_IDS"]
