"""The four claims of arXiv 2509.17588 checked against one run: what the paper says, what the run measured.

:data:`CLAIMS` is the table of claims: id, title, the paper's wording, the source file its test lives in
(see :data:`~headflow.report.run.SOURCES`), the report section with the details, and a judge function
that maps that file's block to one of four verdicts:

* ``agrees``: the run's own test supports the claim (C1 ``holds``; C2 ``class``; C3 and C4 ``supported``).
* ``disagrees``: the test points the other way (C1 does not hold; C2 ``appearance``; C3 ``contradicted``).
* ``inconclusive``: the test could not decide (C2 ``neither``; C3 interval spans 0; C4 an interval
  includes 0, which is absence of evidence, not evidence against; C1 without usable curves).
* ``not run``: the source file is absent (the only place a claim is optional), or the analysis says it
  did not test the claim (flow ``c3.verdict`` / ``c4.verdict`` ``"not tested"``).

Judges read the file strictly (:class:`~headflow.report.doc.Doc`): a renamed key is an error, not ``n/a``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from .doc import Doc
from .fmt import fmt, fmt_ci, fmt_p
from .run import SOURCE_BY_NAME, RunView

__all__ = ["VERDICTS", "Claim", "ClaimSpec", "CLAIMS", "claim", "claims", "claim_c1", "claim_c2", "claim_c3",
           "claim_c4"]

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


#: What a judge returns: (measured lines, verdict, note).
Judged = tuple[tuple[str, ...], str, str]


@dataclass(frozen=True)
class ClaimSpec:
    """One entry of :data:`CLAIMS`: ``judge(doc)`` reads the parsed ``source`` file."""

    id: str
    title: str
    paper: str
    source: str
    section: str
    judge: Callable[[Doc], Judged]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def judge_c1(val: Doc) -> Judged:
    c1 = val["c1"]
    others = c1["k80_others"]
    measured = [f"heads to reach 80% completeness (k80, of {fmt(val['n_heads_total'])}): attribution "
                f"{fmt(c1['k80_attribution'])}, "
                + ", ".join(f"{k.replace('_', '-')} {fmt(v)}" for k, v in others.items())]
    aucs = {k: r["auc_completeness"] for k, r in val["rankings"].items() if k in ("attribution", *others)}
    if aucs:
        measured.append("AUC completeness: " + ", ".join(f"{k.replace('_', '-')} {fmt(v)}" for k, v in aucs.items()))
    subset = val["subset"]
    measured.append(f"a distinct subset (attribution k80 <= half of random's): "
                    f"{'yes' if subset['holds'] else 'no'} ({fmt(subset['k80_attribution'])} vs "
                    f"{fmt(subset['k80_random'])})")
    measured.append(f"{val['n_images']} images; single run, no interval or p-value")
    normaliser = val["normaliser"]
    if not (_finite(normaliser) and normaliser > 0):
        verdict, note = "inconclusive", ("ablating every head does not lower the target (normaliser "
                                         f"{fmt(normaliser)}), so the curves are not interpretable")
    elif c1["k80_attribution"] is None and all(v is None for v in others.values()):
        verdict, note = "inconclusive", "no ranking reaches 80% completeness"
    else:
        verdict = "agrees" if c1["holds"] else "disagrees"
        note = str(c1["rule"])
    return tuple(measured), verdict, note


def judge_c2(sem: Doc) -> Judged:
    factor = sem["overall_factor"]
    test = sem["effects"]["class_vs_appearance"]
    measured = (
        f"mean similarity: same class {fmt(sem['within_class_similarity'])}, same {factor} "
        f"{fmt(sem['within_appearance_similarity'])}, different both {fmt(sem['between_similarity'])}",
        f"class \u2212 {factor}: difference {fmt(test['difference'])}, z {fmt(test['z'])}, "
        f"Cohen's d {fmt(test['cohens_d'])}, permutation p = {fmt_p(sem['p_class_vs_appearance'])} "
        f"({fmt(test['n_permutations'])} permutations)",
        f"{fmt(sem['n_images'])} images, {len(sem['classes'])} classes",
    )
    verdict = {"class": "agrees", "appearance": "disagrees", "neither": "inconclusive"}.get(sem["verdict"],
                                                                                          "inconclusive")
    note = f"analysis verdict: {sem['verdict']} (significance level {fmt(sem['parameters']['significance_level'])})"
    return measured, verdict, note


def judge_c3(flow: Doc) -> Judged:
    c3 = flow["c3"]
    if c3["verdict"] == "not tested":
        return (str(c3["reason"]),), "not run", str(c3["verdict"])
    measured = (
        "effect-weighted mean layer, image pairs \u2212 question pairs: "
        f"{fmt_ci(c3['mean'], c3['lo'], c3['hi'])} "
        f"(95% bootstrap interval, {fmt(c3['n'])} images)",
        f"one-sided Wilcoxon p = {fmt_p(c3['p_wilcoxon'])}, sign test p = {fmt_p(c3['p_sign'])}",
    )
    verdict = {"supported": "agrees", "contradicted": "disagrees"}.get(c3["verdict"], "inconclusive")
    reason = c3.optional("reason")  # only where the analysis declined to judge
    note = f"analysis verdict: {c3['verdict']}" + (f" ({reason})" if reason else "")
    return measured, verdict, note


def objects_not_run_reason(flow: Doc) -> str | None:
    """Why the object/background knockouts were not run, or ``None`` where flow.json has their results."""
    c4 = flow["c4"]
    if c4["verdict"] != "not tested" and flow["objects"]:  # flow.json "objects" is null where not run
        return None
    # "objects_skipped_reason" is written only where the patch geometry failed
    return str(flow.optional("objects_skipped_reason") or c4["reason"])


def judge_c4(flow: Doc) -> Judged:
    reason = objects_not_run_reason(flow)
    if reason is not None:
        return (reason,), "not run", "object/background knockouts were not run"
    objects, c4 = flow["objects"], flow["c4"]
    measured = []
    for name in ("object", "background"):
        p = objects[name]["prob"]
        measured.append(f"{name} tokens knocked out: \u0394p/p = {fmt_ci(p['mean'], p['lo'], p['hi'])} "
                        f"({fmt(p['n'])} images)")
    measured.append("95% bootstrap intervals over images; no p-value")
    verdict = "agrees" if c4["verdict"] == "supported" else "inconclusive"
    note = (f"analysis verdict: {c4['verdict']} "
            f"(object interval excludes 0: {fmt(c4['object_excludes_zero'])}; "
            f"background: {fmt(c4['background_excludes_zero'])})")
    return tuple(measured), verdict, note


#: The claims, in table order.
CLAIMS: tuple[ClaimSpec, ...] = (
    ClaimSpec("C1", "A distinct subset of heads carries the flow",
              "Image-to-answer information passes through a small, distinct subset of attention heads: ablating "
              "the heads ranked by attribution removes the effect with clearly fewer heads than rankings by "
              "single-head ablation, attention weight or chance.",
              source="validation", section="validation", judge=judge_c1),
    ClaimSpec("C2", "Head choice follows semantic class, not appearance",
              "Which heads carry the image is governed by the semantic content (the class of the object), not by "
              "its visual appearance: per-image head attributions of the same class are more alike than those "
              "sharing an appearance.",
              source="semantics", section="semantics", judge=judge_c2),
    ClaimSpec("C3", "Text reaches role/final tokens before the image does",
              "Knocking out question\u2192{role, final} attention hurts at earlier layers than knocking out "
              "image\u2192{role, final}: the text is gathered first, image information arrives later.",
              source="flow", section="flow", judge=judge_c3),
    ClaimSpec("C4", "Object and background tokens both carry information",
              "The image information that reaches the answer sits both in the object's tokens and in background "
              "tokens: knocking out either changes the answer probability.",
              source="flow", section="objects", judge=judge_c4),
)
CLAIM_BY_ID = {c.id: c for c in CLAIMS}


def claim(view: RunView, cid: str) -> Claim:
    """Claim ``cid`` judged on ``view``; ``not run`` where its source file is absent."""
    spec = CLAIM_BY_ID[cid]
    doc = view.optional(spec.source)
    if doc is None:
        source = SOURCE_BY_NAME[spec.source]
        return Claim(spec.id, spec.title, spec.paper, (f"{source.file} is missing",), "not run",
                     f"Run `{source.command}`.", spec.section)
    measured, verdict, note = spec.judge(doc)
    return Claim(spec.id, spec.title, spec.paper, measured, verdict, note, spec.section)


def claim_c1(view: RunView) -> Claim:
    return claim(view, "C1")


def claim_c2(view: RunView) -> Claim:
    return claim(view, "C2")


def claim_c3(view: RunView) -> Claim:
    return claim(view, "C3")


def claim_c4(view: RunView) -> Claim:
    return claim(view, "C4")


def claims(view: RunView) -> list[Claim]:
    """Every claim of :data:`CLAIMS`, in order."""
    return [claim(view, c.id) for c in CLAIMS]
