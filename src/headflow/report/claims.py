"""The four claims of arXiv 2509.17588 checked against one run: what the paper says, what the run measured.

Each claim is read from the JSON block its analysis wrote; this module only maps that block to one
of four verdicts:

* ``agrees``: the run's own test supports the claim (C1 ``holds``; C2 ``class``; C3 and C4 ``supported``).
* ``disagrees``: the test points the other way (C1 does not hold; C2 ``appearance``; C3 ``contradicted``).
* ``inconclusive``: the test could not decide (C2 ``neither``; C3 interval spans 0; C4 an interval
  includes 0, which is absence of evidence, not evidence against; C1 without usable curves).
* ``not run``: the analysis or its block is missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .fmt import fmt, fmt_ci, fmt_p
from .run import RunView

VERDICTS = ("agrees", "disagrees", "inconclusive", "not run")


@dataclass(frozen=True)
class Claim:
    """One row of the claims table (plain text; the HTML layer escapes it)."""

    id: str
    title: str
    paper: str
    measured: tuple[str, ...]
    verdict: str
    note: str
    section: str


PAPER = {
    "C1": ("A distinct subset of heads carries the flow",
           "Image-to-answer information passes through a small, distinct subset of attention heads: ablating the "
           "heads ranked by attribution removes the effect with clearly fewer heads than rankings by single-head "
           "ablation, attention weight or chance."),
    "C2": ("Head choice follows semantic class, not appearance",
           "Which heads carry the image is governed by the semantic content (the class of the object), not by its "
           "visual appearance: per-image head attributions of the same class are more alike than those sharing "
           "an appearance."),
    "C3": ("Text reaches role/final tokens before the image does",
           "Knocking out question\u2192{role, final} attention hurts at earlier layers than knocking out "
           "image\u2192{role, final}: the text is gathered first, image information arrives later."),
    "C4": ("Object and background tokens both carry information",
           "The image information that reaches the answer sits both in the object's tokens and in background "
           "tokens: knocking out either changes the answer probability."),
}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def claim_c1(view: RunView) -> Claim:
    title, paper = PAPER["C1"]
    val = view.get("validation")
    if val is None or "c1" not in val:
        return Claim("C1", title, paper, ("validation.json is missing",), "not run",
                     "Run `headflow validate DIR`.", "validation")
    c1 = val["c1"]
    others = c1.get("k80_others", {})
    n = val.get("n_heads")
    measured = [f"heads to reach 80% completeness (k80, of {fmt(n)}): attribution {fmt(c1.get('k80_attribution'))}, "
                + ", ".join(f"{k.replace('_', '-')} {fmt(v)}" for k, v in others.items())]
    aucs = {k: r.get("auc_completeness") for k, r in val.get("rankings", {}).items()
            if k in ("attribution", *others)}
    if aucs:
        measured.append("AUC completeness: " + ", ".join(f"{k.replace('_', '-')} {fmt(v)}" for k, v in aucs.items()))
    subset = val.get("subset")
    if subset:
        measured.append(f"a distinct subset (attribution k80 <= half of random's): "
                        f"{'yes' if subset.get('holds') else 'no'} ({fmt(subset.get('k80_attribution'))} vs "
                        f"{fmt(subset.get('k80_random'))})")
    measured.append(f"{val.get('n_images', 'n/a')} images; single run, no interval or p-value")
    usable = _finite(val.get("normaliser")) and val["normaliser"] > 0
    if not usable:
        verdict, note = "inconclusive", ("ablating every head does not lower the target (normaliser "
                                         f"{fmt(val.get('normaliser'))}), so the curves are not interpretable")
    elif c1.get("k80_attribution") is None and all(v is None for v in others.values()):
        verdict, note = "inconclusive", "no ranking reaches 80% completeness"
    else:
        verdict = "agrees" if c1.get("holds") else "disagrees"
        note = str(c1.get("rule", ""))
    return Claim("C1", title, paper, tuple(measured), verdict, note, "validation")


def claim_c2(view: RunView) -> Claim:
    title, paper = PAPER["C2"]
    sem = view.get("semantics")
    if sem is None or "verdict" not in sem:
        return Claim("C2", title, paper, ("semantics.json is missing",), "not run",
                     "Run `headflow semantics DIR`.", "semantics")
    factor = sem.get("overall_factor", "appearance")
    test = sem.get("effects", {}).get("class_vs_appearance", {})
    measured = (
        f"mean similarity: same class {fmt(sem.get('within_class_similarity'))}, same {factor} "
        f"{fmt(sem.get('within_appearance_similarity'))}, different both {fmt(sem.get('between_similarity'))}",
        f"class \u2212 {factor}: difference {fmt(test.get('difference'))}, z {fmt(test.get('z'))}, "
        f"Cohen's d {fmt(test.get('cohens_d'))}, permutation p = {fmt_p(sem.get('p_class_vs_appearance'))} "
        f"({fmt(test.get('n_permutations'))} permutations)",
        f"{fmt(sem.get('n_images'))} images, {len(sem.get('classes', []))} classes",
    )
    verdict = {"class": "agrees", "appearance": "disagrees", "neither": "inconclusive"}.get(sem["verdict"],
                                                                                          "inconclusive")
    alpha = sem.get("parameters", {}).get("alpha")
    note = f"analysis verdict: {sem['verdict']} (alpha {fmt(alpha)})"
    return Claim("C2", title, paper, measured, verdict, note, "semantics")


def claim_c3(view: RunView) -> Claim:
    title, paper = PAPER["C3"]
    flow = view.get("flow")
    c3 = None if flow is None else flow.get("c3")
    if c3 is None:
        return Claim("C3", title, paper, ("flow/flow.json is missing",), "not run",
                     "Run `headflow flow --out DIR/flow`.", "flow")
    if "mean" not in c3:
        return Claim("C3", title, paper, (str(c3.get("reason", "not tested")),), "not run",
                     str(c3.get("verdict", "not tested")), "flow")
    measured = (
        "effect-weighted mean layer, image pairs \u2212 question pairs: "
        f"{fmt_ci(c3['mean'], c3.get('lo'), c3.get('hi'))} "
        f"(95% bootstrap interval, {fmt(c3.get('n'))} images)",
        f"one-sided Wilcoxon p = {fmt_p(c3.get('p_wilcoxon'))}, sign test p = {fmt_p(c3.get('p_sign'))}",
    )
    verdict = {"supported": "agrees", "contradicted": "disagrees"}.get(c3.get("verdict"), "inconclusive")
    note = f"analysis verdict: {c3.get('verdict')}" + (f" ({c3['reason']})" if c3.get("reason") else "")
    return Claim("C3", title, paper, measured, verdict, note, "flow")


def claim_c4(view: RunView) -> Claim:
    title, paper = PAPER["C4"]
    flow = view.get("flow")
    c4 = None if flow is None else flow.get("c4")
    if c4 is None:
        return Claim("C4", title, paper, ("flow/flow.json is missing",), "not run",
                     "Run `headflow flow --out DIR/flow`.", "objects")
    objects = flow.get("objects") or {}
    if c4.get("verdict") == "not tested" or not objects:
        reason = flow.get("objects_skipped_reason") or c4.get("reason", "not tested")
        return Claim("C4", title, paper, (str(reason),), "not run", "object/background knockouts were not run",
                     "objects")
    measured = []
    for name in ("object", "background"):
        p = objects.get(name, {}).get("prob", {})
        measured.append(f"{name} tokens knocked out: \u0394p/p = {fmt_ci(p.get('mean'), p.get('lo'), p.get('hi'))} "
                        f"({fmt(p.get('n'))} images)")
    measured.append("95% bootstrap intervals over images; no p-value")
    verdict = "agrees" if c4.get("verdict") == "supported" else "inconclusive"
    note = (f"analysis verdict: {c4.get('verdict')} "
            f"(object interval excludes 0: {fmt(c4.get('object_excludes_zero'))}; "
            f"background: {fmt(c4.get('background_excludes_zero'))})")
    return Claim("C4", title, paper, tuple(measured), verdict, note, "objects")


def claims(view: RunView) -> list[Claim]:
    """The four claims, in order."""
    return [claim_c1(view), claim_c2(view), claim_c3(view), claim_c4(view)]
