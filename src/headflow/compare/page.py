"""``compare.html``: one self-contained page in the report's style (inline CSS, figures as data URIs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..report.fmt import fmt, fmt_pct
from ..report.html import CSS
from ..report.markup import callout, esc, figure, table

if TYPE_CHECKING:  # pragma: no cover
    from .analysis import ComparisonResult

CAPTIONS = {
    "compare_profiles": "Share of the positive attribution mass per depth bin: each layer's share spread over its "
                        "depth span [l/L, (l+1)/L], so models of different depth line up.",
    "compare_concentration": "Share of the positive attribution mass held by the top fractions of heads.",
    "compare_maps": "Mean attribution per run (layer x head), each on its own colour scale.",
}


def render_page(result: "ComparisonResult", out: Path) -> str:
    """The comparison page (tables read from ``result.summary``; figures from ``out/figures``)."""
    runs, pairs = result.summary["runs"], result.summary["pairs"]
    fractions = list(runs[0]["top_share"])
    run_rows = [[r["name"], r["model"], f"{r['n_layers']}x{r['n_heads']}", r["n_images"], r["baseline"], r["seed"],
                 fmt(r["mass_weighted_depth"]), *[fmt_pct(r["top_share"][f]) for f in fractions]] for r in runs]
    pair_rows = []
    for p in pairs:
        head = p["head_level"]
        pair_rows.append([f"{p['runs'][0]} vs {p['runs'][1]}", fmt(p["profile_correlation"]), fmt(p["profile_distance"]),
                          fmt(head["spearman"]) if head else "n/a",
                          f"{fmt_pct(head['top_k_overlap'])} of {head['top_k']}" if head else "n/a",
                          p.get("reason") or ""])
    figures = "".join(figure(_png(out, name), name, f"figures/{name}.png", caption) for name, caption in CAPTIONS.items())
    body = (
        "<section id=\"runs\" class=\"section\"><h2>Runs</h2>"
        + table(["run", "model", "layers x heads", "images", "baseline", "seed", "mass-weighted depth",
                 *[f"top {float(f):.0%} share" for f in fractions]], run_rows, id="runs-table")
        + "</section><section id=\"pairs\" class=\"section\"><h2>Pairs</h2>"
        + callout("Profiles are compared for every pair (Pearson correlation and total-variation distance of the "
                  "depth profiles). Head-level statistics (Spearman correlation of the maps, overlap of the top-k "
                  "head sets) only where both runs are of the same model and head layout.")
        + table(["pair", "profile correlation", "profile distance", "Spearman (heads)", "top-k overlap", "note"],
                pair_rows, id="pairs-table")
        + "</section><section id=\"figures\" class=\"section\"><h2>Figures</h2>" + figures + "</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>headflow compare: {esc(', '.join(result.names))}</title><style>{CSS}</style></head><body>"
            f"<header><h1>headflow compare</h1><p class=\"muted\">{esc(len(runs))} runs: "
            f"{esc(', '.join(result.names))}</p></header>{body}</body></html>\n")


def _png(out: Path, name: str) -> Path | None:
    path = out / "figures" / f"{name}.png"
    return path if path.exists() else None
