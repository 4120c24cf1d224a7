"""One builder per report section: ``builder(view) -> (body_html, missing_reason_or_None)``.

Builders read numbers only from the run's JSON (:class:`~headflow.report.run.RunView`) and format them
with :mod:`headflow.report.fmt`; all text is escaped through :func:`~headflow.report.html.esc`.
"""

from __future__ import annotations

from typing import Any, Callable

from .claims import claim_c1, claim_c2, claim_c3, claim_c4, claims
from .fmt import fmt, fmt_ci, fmt_head, fmt_layer, fmt_p, fmt_pct
from .html import badge, callout, esc, figure, section_figures, table
from .run import RunView

Built = tuple[str, "str | None"]


def _missing(file: str, command: str) -> str:
    return f"<code>{esc(file)}</code> is missing. Run <code>{esc(command)}</code> to add it."


# ----------------------------------------------------------------------------------------------


def claims_section(view: RunView) -> Built:
    rows = []
    for c in claims(view):
        measured = "<ul>" + "".join(f"<li>{esc(m)}</li>" for m in c.measured) + "</ul>"
        rows.append(f'<tr id="claim-{esc(c.id)}" data-claim="{esc(c.id)}" data-verdict="{esc(c.verdict)}">'
                    f'<td><strong>{esc(c.id)}</strong><br>{esc(c.title)}</td><td>{esc(c.paper)}</td>'
                    f'<td>{measured}<a href="#{esc(c.section)}">details</a></td>'
                    f'<td>{badge(c.verdict)}<div class="note">{esc(c.note)}</div></td></tr>')
    head = "".join(f"<th>{h}</th>" for h in ("Claim", "What the paper says", "What this run measured", "Verdict"))
    body = (f'<table class="claims" id="claims-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}'
            "</tbody></table>"
            '<p class="note">Verdicts: <em>agrees</em> the run\'s own test supports the claim; <em>disagrees</em> it '
            "points the other way; <em>inconclusive</em> it cannot decide (e.g. an interval spans 0); <em>not run</em> "
            "the analysis is missing. Intervals are 95% bootstrap intervals over images.</p>")
    summary = view.get("attribution") or {}
    acc = summary.get("clean_accuracy")
    if isinstance(acc, (int, float)) and acc < 0.5:
        keep = (view.get("config") or {}).get("spec", {}).get("keep_wrong")
        body = callout(f"The clean model answers {esc(fmt_pct(acc))} of the images correctly"
                       + (" and wrong answers were kept" if keep else "")
                       + ": verdicts on this run say little about the paper's claims.", "warn") + body
    return body, None


def model_section(view: RunView) -> Built:
    config = view.get("config") or {}
    summary = view.get("attribution") or {}
    model = config.get("model", {})
    spec = config.get("spec", {})
    study = view.get("study") or {}
    rows: list[tuple[str, Any, str | None]] = [
        ("Model", model.get("name", spec.get("model")), "model"),
        ("Model class", model.get("class", spec.get("model_class")), "model_class"),
        ("Family", model.get("family"), "family"),
        ("Layers \u00d7 heads", f"{fmt(summary.get('n_layers'))} \u00d7 {fmt(summary.get('heads_per_layer'))} "
                                f"= {fmt(summary.get('n_heads'))} heads", "layers_heads"),
        ("Key/value heads per layer", fmt(model.get("n_kv_heads")), "n_kv_heads"),
        ("dtype / device", f"{model.get('dtype', 'n/a')} / {model.get('device', 'n/a')}", None),
        ("Dataset", f"{spec.get('data', study.get('data', 'n/a'))} (seed {fmt(spec.get('data_seed'))})", "dataset"),
        ("Images analysed / loaded", f"{fmt(summary.get('n_images'))} / {fmt(summary.get('n_images_total'))}",
         "n_images"),
        ("Clean accuracy", fmt_pct(summary.get("clean_accuracy")), "clean_accuracy"),
        ("Wrongly answered images kept", fmt(spec.get("keep_wrong")), None),
        ("Question", spec.get("question", "n/a"), None),
        ("Masks (fit / held-out), ablation probability",
         f"{fmt(summary.get('n_masks'))} / {fmt(summary.get('n_val'))}, \u03b1 = {fmt(summary.get('ablation_prob'))}",
         "n_masks"),
        ("Baseline, target, fit", f"{summary.get('baseline', 'n/a')}, {summary.get('target', 'n/a')}, "
                                  f"{summary.get('fit', 'n/a')}", None),
    ]
    if study:
        plan = study.get("plan") or {}
        rows.append(("Study plan", ", ".join(f"{k} {fmt(v)}" for k, v in plan.items()), None))
        rows.append(("Study time", f"{fmt(study.get('seconds'), 1)} s, seed {fmt(study.get('seed'))}", "seconds"))
    versions = config.get("versions") or {}
    if versions:
        rows.append(("Versions", ", ".join(f"{k} {v}" for k, v in versions.items()), None))
    if config.get("spec_hash"):
        rows.append(("Spec hash", config["spec_hash"], None))
    body = _kv_table(rows, "model-card")
    if view.model_card:
        lines = [ln for ln in view.model_card.strip().splitlines()]
        body += ("<h3>Model card (embedded default model)</h3><details open id=\"model-card-text\"><summary>"
                 "MODEL_CARD.md</summary><pre>" + esc("\n".join(lines[:80]))
                 + ("\n\u2026" if len(lines) > 80 else "") + "</pre></details>")
    if "config" in view.missing:
        body += callout("<code>config.json</code> is missing; model details come from <code>summary.json</code> only.")
    return body, None


def _kv_table(rows: list[tuple[str, Any, str | None]], tid: str) -> str:
    cells = []
    for name, value, key in rows:
        attr = f' data-key="{esc(key)}"' if key else ""
        cells.append(f"<tr><th>{esc(name)}</th><td{attr}>{esc('n/a' if value is None else value)}</td></tr>")
    body = "".join(cells)
    return f'<table class="kv" id="{esc(tid)}"><tbody>{body}</tbody></table>'


def attribution_section(view: RunView) -> Built:
    s = view.get("attribution") or {}
    body = section_figures(view, "attribution", {
        "attribution_heatmap": "Mean attribution per head (layer \u00d7 head): the answer's "
                               f"{s.get('target', 'target')} lost when the head is ablated "
                               f"({s.get('baseline')} baseline)."})
    top = s.get("top_heads") or []
    body += f"<h3>Top heads</h3><p class=\"note\">The {len(top)} heads with the largest mean attribution over " \
            f"{esc(fmt(s.get('n_images')))} images.</p>"
    body += table(("Rank", "Head", "Layer", "Head index", "Mean attribution"),
                  [(i + 1, fmt_head(layer, head), layer, head, fmt(score))
                   for i, (layer, head, score) in enumerate(top)], id="top-heads")
    return body, None


def lds_section(view: RunView) -> Built:
    s = view.get("attribution") or {}
    body = section_figures(view, "lds", {"lds_hist": "Per-image correlation between predicted and actual target "
                                                     "on held-out masks."})
    rows = []
    for name in ("pearson", "spearman"):
        q = s.get(f"lds_{name}_quartiles") or [None, None, None]
        rows.append((name.capitalize(), fmt(s.get(f"lds_{name}_median")), fmt(q[0]), fmt(q[2])))
    body += table(("Correlation", "Median", "Lower quartile", "Upper quartile"), rows, id="lds-table",
                  keys=(None, "lds_median", None, None))
    body += f"<p class=\"note\">{esc(fmt(s.get('n_val')))} held-out masks per image, " \
            f"{esc(fmt(s.get('n_images')))} images.</p>"
    return body, None


def validation_section(view: RunView) -> Built:
    v = view.get("validation")
    if v is None:
        return "", _missing("validation.json", "headflow validate DIR")
    body = section_figures(view, "validation", {
        "validation_curves": "Completeness (ablate the top-k heads) and faithfulness (keep only the top-k) for "
                             "every ranking, with accuracy."})
    rows = [(name.replace("_", " "), fmt(r.get("k80_completeness")), fmt(r.get("k80_faithfulness")),
             fmt(r.get("auc_completeness")), fmt(r.get("auc_faithfulness")))
            for name, r in (v.get("rankings") or {}).items()]
    body += table(("Ranking", "k80 completeness", "k80 faithfulness", "AUC completeness", "AUC faithfulness"),
                  rows, id="validation-table")
    c1 = v.get("c1") or {}
    body += (f"<p class=\"note\">{esc(fmt(v.get('n_images')))} images, {esc(fmt(v.get('n_heads')))} heads, target "
             f"{esc(v.get('target'))}; clean target {esc(fmt(v.get('mean_clean_target')))}, all heads ablated "
             f"{esc(fmt(v.get('mean_all_ablated_target')))}. k80 = smallest k reaching 80%.</p>")
    if c1:
        body += callout(f"<strong>C1</strong> {badge(claim_c1(view).verdict)} ({esc(c1.get('rule', ''))}): "
                        f"{'holds' if c1.get('holds') else 'does not hold'} \u2014 attribution k80 "
                        f"{esc(fmt(c1.get('k80_attribution')))}.")
    subset = v.get("subset") or {}
    if subset:
        body += callout(f"<strong>Distinct subset</strong> ({esc(subset.get('rule', ''))}): "
                        f"{'holds' if subset.get('holds') else 'does not hold'} — attribution k80 "
                        f"{esc(fmt(subset.get('k80_attribution')))} vs random {esc(fmt(subset.get('k80_random')))}.")
    return body, None


def attention_section(view: RunView) -> Built:
    if view.get("validation") is None and view.figure("figures/attribution_vs_attention.png") is None:
        return "", _missing("validation.json", "headflow validate DIR")
    body = section_figures(view, "attention", {
        "attribution_vs_attention": "Mean attribution vs the attention mass the final token puts on image "
                                    "positions, one dot per head."})
    return body, None


def flow_section(view: RunView) -> Built:
    f = view.get("flow")
    if f is None:
        return "", _missing("flow/flow.json", "headflow flow --out DIR/flow")
    window = (f.get("resolved") or {}).get("window_")
    body = section_figures(view, "flow", {
        "flow_curves": f"Relative change of the answer probability when a token-group pair is knocked out in a "
                       f"window of {fmt(window)} layers, per window start (95% band)."})
    rows = []
    for name, p in (f.get("pairs") or {}).items():
        curve = p.get("curve") or []
        starts = p.get("window_starts") or []
        peak, mean = p.get("peak_layer") or {}, p.get("mean_layer") or {}
        at_peak = curve[starts.index(peak["value"])] if peak.get("value") in starts and curve else None
        rows.append((name.replace("->", " \u2192 "),
                     fmt_ci(peak.get("value"), peak.get("lo"), peak.get("hi"), number=fmt_layer), fmt(at_peak),
                     fmt_ci(mean.get("value"), mean.get("lo"), mean.get("hi"), number=fmt_layer)))
    body += table(("Pair", "Peak layer [95% CI]", "\u0394p/p at peak", "Effect-weighted mean layer [95% CI]"), rows,
                  id="flow-table")
    images = f.get("images") or {}
    body += (f"<p class=\"note\">{esc(fmt(images.get('n_kept')))} of {esc(fmt(images.get('n_total')))} images "
             f"kept; window {esc(fmt(window))} layers; effect: {esc(f.get('effect', ''))}.</p>")
    c3 = f.get("c3") or {}
    if "mean" in c3:
        body += callout(f"<strong>C3</strong> {badge(claim_c3(view).verdict)} (analysis verdict: "
                        f"{esc(c3.get('verdict'))}) {esc(c3.get('statistic', ''))}: "
                        f"{esc(fmt_ci(c3['mean'], c3.get('lo'), c3.get('hi')))} ({esc(fmt(c3.get('n')))} images); "
                        f"one-sided Wilcoxon p = {esc(fmt_p(c3.get('p_wilcoxon')))}, sign test p = "
                        f"{esc(fmt_p(c3.get('p_sign')))}. A positive difference means image information arrives later.")
    else:
        body += callout(f"<strong>C3</strong> not tested: {esc(c3.get('reason', 'no C3 block in flow.json'))}.")
    return body, None


def objects_section(view: RunView) -> Built:
    f = view.get("flow")
    if f is None:
        return "", _missing("flow/flow.json", "headflow flow --out DIR/flow")
    objects = f.get("objects") or {}
    if not objects:
        reason = f.get("objects_skipped_reason") or (f.get("c4") or {}).get("reason") or "no object masks"
        return "", f"The object/background knockouts were not run: {esc(reason)}."
    body = section_figures(view, "objects", {
        "flow_objects": "Knock out image \u2192 text attention from object tokens, background tokens, and random "
                        "token sets of the same sizes (95% intervals).",
        "flow_token_maps": "Per-token effect of knocking out one image token, drawn over the image."})
    rows = []
    for cond, d in objects.items():
        prob, logit = d.get("prob") or {}, d.get("logit") or {}
        rows.append((cond.replace("_", " "), fmt_ci(prob.get("mean"), prob.get("lo"), prob.get("hi")),
                     fmt_ci(logit.get("mean"), logit.get("lo"), logit.get("hi")), fmt(prob.get("n"))))
    body += table(("Condition", "\u0394p/p [95% CI]", "\u0394logit [95% CI]", "Images"), rows, id="objects-table")
    c4 = f.get("c4") or {}
    body += callout(f"<strong>C4</strong> {badge(claim_c4(view).verdict)} (analysis verdict: "
                    f"{esc(c4.get('verdict'))}) object interval excludes 0: "
                    f"{esc(fmt(c4.get('object_excludes_zero')))}; background interval excludes 0: "
                    f"{esc(fmt(c4.get('background_excludes_zero')))}.")
    return body, None


def semantics_section(view: RunView) -> Built:
    s = view.get("semantics")
    if s is None:
        return "", _missing("semantics.json", "headflow semantics DIR")
    factor = s.get("overall_factor", "appearance")
    sim = (s.get("resolved_parameters") or {}).get("similarity_", "similarity")
    body = section_figures(view, "semantics", {
        "similarity_matrix": f"Image \u00d7 image {sim} similarity of head attributions, ordered by class and by "
                             f"{factor}.",
        "embedding": "2-D embedding of the per-image attribution vectors, coloured by class and appearance.",
        "class_heatmaps": "Mean attribution per class (layer \u00d7 head)."})
    body += "<h3>Pair similarity per appearance factor</h3>"
    rows = []
    for name, pf in (s.get("per_factor") or {}).items():
        m, t = pf.get("mean_similarity") or {}, (pf.get("tests") or {}).get("class_vs_appearance") or {}
        rows.append((name + (" (overall)" if name == factor else ""), fmt(m.get("within_class")),
                     fmt(m.get("within_appearance")), fmt(m.get("between")), fmt(t.get("difference")),
                     fmt(t.get("z")), fmt_p(t.get("p_value")), pf.get("verdict", "n/a")))
    body += table(("Factor", "Same class", "Same factor", "Different both", "Class \u2212 factor", "z",
                   "p (permutation)", "Verdict"), rows, id="semantics-table")
    probes, pvals = s.get("probe_accuracy") or {}, s.get("probe_p_value") or {}
    reps = list(dict.fromkeys(r for row in probes.values() for r in row if r != "chance"))
    body += "<h3>Linear probes (cross-validated accuracy, p against chance)</h3>"
    body += table(("Target", "Chance", *reps),
                  [(t, fmt(row.get("chance")), *[f"{fmt(row.get(r))} (p {fmt_p((pvals.get(t) or {}).get(r))})"
                                                   for r in reps]) for t, row in probes.items()], id="probe-table")
    jac = s.get("topk_jaccard") or {}
    top_k = (s.get("resolved_parameters") or {}).get("top_k_")
    if jac:
        body += f"<h3>Top-{esc(fmt(top_k))} head sets (mean Jaccard)</h3>"
        body += table(tuple(k.replace("_", " ") for k in jac), [tuple(fmt(v) for v in jac.values())],
                      id="jaccard-table")
    body += (f"<p class=\"note\">{esc(fmt(s.get('n_images')))} images, {len(s.get('classes', []))} classes; "
             f"{len(s.get('shared_heads', []))} heads are in every class's top-{esc(fmt(top_k))}.</p>")
    skipped = (s.get("resolved_parameters") or {}).get("skipped_factors") or {}
    if skipped:
        body += "<p class=\"note\">Factors not analysed: " + "; ".join(
            f"{esc(k)} ({esc(v)})" for k, v in skipped.items()) + ".</p>"
    verdict = s.get("verdict", "n/a")
    body += callout(f"<strong>C2</strong> {badge(claim_c2(view).verdict)} (analysis verdict: {esc(verdict)}) "
                    f"same-class vs same-{esc(factor)} pairs: "
                    f"{esc(fmt(s.get('within_class_similarity')))} vs {esc(fmt(s.get('within_appearance_similarity')))}"
                    f", permutation p = {esc(fmt_p(s.get('p_class_vs_appearance')))}.")
    return body, None


def other_figures(view: RunView) -> str:
    """Figures present in the run directory that no section shows (so none is silently left out)."""
    return "".join(figure(view, rel.rsplit("/", 1)[-1].removesuffix(".png"), rel, rel) for rel in view.extra_figures)


BUILDERS: dict[str, Callable[[RunView], Built]] = {
    "claims": claims_section, "model": model_section, "attribution": attribution_section, "lds": lds_section,
    "validation": validation_section, "attention": attention_section, "flow": flow_section,
    "objects": objects_section, "semantics": semantics_section,
}

__all__ = ["BUILDERS", "other_figures"]
