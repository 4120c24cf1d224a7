"""The report's sections as one table, :data:`SECTIONS`, and one builder function per section.

Each :class:`Section` entry says what the section is (``id``, ``title``), which result files it reads
(``reads``: the section is marked "not in this run" where one is absent; ``reads_if_present``: the builder
gets ``None`` where absent), which figures it embeds (shown first, in order), and its builder. The page
(:mod:`headflow.report.html`) iterates over the table; adding a section is one entry here plus one builder:

    def probes_section(inp: Inputs) -> Built:
        s = inp["semantics"]
        return Built(table(("Target",), [(t,) for t in s["probe_accuracy"]]),
                     captions={"probe_bars": "Probe accuracy per target."})

    Section("probes", "Linear probes", probes_section, reads=("semantics",),
            figures=(Figure("probe_bars", "figures/probe_bars.png"),)),

Builders read numbers only through :class:`~headflow.report.doc.Doc` (a renamed key raises
:class:`~headflow.report.doc.MissingKeyError` naming file and key), format them with
:mod:`headflow.report.fmt`, and escape all text with :func:`~headflow.report.markup.esc`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .claims import CLAIMS, claim_c1, claim_c2, claim_c3, claim_c4, claims, objects_not_run_reason
from .doc import Doc
from .fmt import NA, fmt, fmt_ci, fmt_head, fmt_layer, fmt_p, fmt_pct
from .markup import badge, callout, esc, kv_table, table
from .run import SOURCE_BY_NAME, RunView

__all__ = ["Figure", "Section", "Built", "Inputs", "SECTIONS", "SECTION_IDS", "section_by_id", "missing_note"]


@dataclass(frozen=True)
class Figure:
    """A figure a section embeds: ``name`` (the ``data-name`` hook) and its path relative to the run directory."""

    name: str
    path: str


@dataclass(frozen=True)
class Built:
    """What a builder returns.

    Attributes
    ----------
    html : str
        The section body after its figures (already escaped).
    captions : mapping of str to str
        Plain-text caption per figure name of the entry (every figure of the entry needs one).
    missing : str or None
        HTML saying why the section is not in this run although its files exist (e.g. flow.json without
        object knockouts); the section is then marked missing and ``html`` is ignored.
    """

    html: str = ""
    captions: Mapping[str, str] = field(default_factory=dict)
    missing: str | None = None


@dataclass(frozen=True)
class Section:
    """One entry of :data:`SECTIONS` (see the module docstring)."""

    id: str
    title: str
    build: Callable[["Inputs"], Built]
    reads: tuple[str, ...] = ()
    reads_if_present: tuple[str, ...] = ()
    figures: tuple[Figure, ...] = ()


@dataclass(frozen=True)
class Inputs:
    """A builder's view of the run: only the files its entry declares."""

    view: RunView
    entry: Section

    def __getitem__(self, source: str) -> Doc:
        """A file listed in the entry's ``reads`` (present: the page checked before calling the builder)."""
        if source not in self.entry.reads:
            raise LookupError(f"report section {self.entry.id!r} reads {source!r}, which its SECTIONS entry does "
                              f"not list in reads={self.entry.reads!r}")
        return self.view.doc(source)

    def optional(self, source: str) -> Doc | None:
        """A file listed in the entry's ``reads_if_present``, or ``None`` where the run does not have it."""
        if source not in self.entry.reads_if_present:
            raise LookupError(f"report section {self.entry.id!r} reads {source!r} if present, which its SECTIONS "
                              f"entry does not list in reads_if_present={self.entry.reads_if_present!r}")
        return self.view.optional(source)


def missing_note(source: str) -> str:
    """``<code>validation.json</code> is missing. Run <code>headflow validate DIR</code> to add it.``"""
    s = SOURCE_BY_NAME[source]
    return f"<code>{esc(s.file)}</code> is missing. Run <code>{esc(s.command)}</code> to add it."


def text(value: Any) -> str:
    """A label or free text from a result file (``None`` reads ``n/a``)."""
    return NA if value is None else str(value)


# ----------------------------------------------------------------------------------------------
# builders, in page order


def claims_section(inp: Inputs) -> Built:
    rows = []
    for c in claims(inp.view):
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
    acc = inp["attribution"]["clean_accuracy"]
    if isinstance(acc, (int, float)) and acc < 0.5:
        config = inp.optional("config")
        keep = config["spec"]["keep_wrong"] if config is not None else None
        body = callout(f"The clean model answers {esc(fmt_pct(acc))} of the images correctly"
                       + (" and wrong answers were kept" if keep else "")
                       + ": verdicts on this run say little about the paper's claims.", "warn") + body
    return Built(body)


def model_section(inp: Inputs) -> Built:
    summary, config, study = inp["attribution"], inp.optional("config"), inp.optional("study")
    if config is not None:
        model, spec = config["model"], config["spec"]
        name, model_class, family = model["name"], model["class"], model["family"]
        n_kv, dtype, device = model["n_kv_heads"], model["dtype"], model["device"]
        data, data_seed = spec["data"]["spec"], spec["data"]["seed"]  # load_dataset's arguments, as recorded
        keep_wrong, question = spec["keep_wrong"], spec["question"]
    else:  # config.json is optional: the model rows read n/a and a note says why
        name = model_class = family = n_kv = dtype = device = data_seed = keep_wrong = question = None
        data = study["data"] if study is not None else None
    rows: list[tuple[str, Any, str | None]] = [
        ("Model", name, "model"),
        ("Model class", model_class, "model_class"),
        ("Family", family, "family"),
        ("Layers \u00d7 heads", f"{fmt(summary['n_layers'])} \u00d7 {fmt(summary['n_heads'])} "
                                f"= {fmt(summary['n_heads_total'])} heads", "layers_heads"),
        ("Key/value heads per layer", fmt(n_kv), "n_kv_heads"),
        ("dtype / device", f"{text(dtype)} / {text(device)}", None),
        ("Dataset", f"{text(data)} (seed {fmt(data_seed)})", "dataset"),
        ("Images analysed / loaded", f"{fmt(summary['n_images'])} / {fmt(summary['n_images_total'])}",
         "n_images"),
        ("Data items skipped (bad data)", ", ".join(f"{reason}: {count}" for reason, count in
                                                   summary["data_problems"].items()) or "none", "data_problems"),
        ("Labels the model cannot write (images skipped)",
         ", ".join(map(str, summary.optional("unanswerable_labels") or [])) or "none",  # (older runs lack it)
         "unanswerable_labels"),
        ("Clean accuracy", fmt_pct(summary["clean_accuracy"]), "clean_accuracy"),
        ("Wrongly answered images kept", fmt(keep_wrong), None),
        ("Question", text(question), None),
        ("Masks (fit / held-out), ablation probability",
         f"{fmt(summary['n_masks'])} / {fmt(summary['n_val'])}, \u03b1 = {fmt(summary['ablation_prob'])}",
         "n_masks"),
        ("Baseline, target, fit", f"{summary['baseline']}, {summary['target']}, {summary['fit']}", None),
    ]
    if study is not None:
        rows.append(("Study plan", ", ".join(f"{k} {fmt(v)}" for k, v in study["plan"].items()), None))
        rows.append(("Study time", f"{fmt(study['seconds'], 1)} s, seed {fmt(study['seed'])}", "seconds"))
    if config is not None:
        versions = config["versions"]
        if versions:
            rows.append(("Versions", ", ".join(f"{k} {v}" for k, v in versions.items()), None))
        if config["spec_hash"]:
            rows.append(("Spec hash", config["spec_hash"], None))
    body = kv_table(rows, "model-card")
    card = inp.view.model_card
    if card:
        lines = card.strip().splitlines()
        body += ("<h3>Model card (embedded default model)</h3><details open id=\"model-card-text\"><summary>"
                 "MODEL_CARD.md</summary><pre>" + esc("\n".join(lines[:80]))
                 + ("\n\u2026" if len(lines) > 80 else "") + "</pre></details>")
    if "config" in inp.view.missing:
        body += callout("<code>config.json</code> is missing; model details come from <code>summary.json</code> only.")
    return Built(body)


def attribution_section(inp: Inputs) -> Built:
    s = inp["attribution"]
    top = s["top_heads"]
    body = (f"<h3>Top heads</h3><p class=\"note\">The {len(top)} heads with the largest mean attribution over "
            f"{esc(fmt(s['n_images']))} images.</p>")
    body += table(("Rank", "Head", "Layer", "Head index", "Mean attribution"),
                  [(i + 1, fmt_head(layer, head), layer, head, fmt(score))
                   for i, (layer, head, score) in enumerate(top)], id="top-heads")
    return Built(body, captions={
        "attribution_heatmap": f"Mean attribution per head (layer \u00d7 head): the answer's {s['target']} lost "
                               f"when the head is ablated ({s['baseline']} baseline)."})


def lds_section(inp: Inputs) -> Built:
    s = inp["attribution"]
    if s.optional("method") == "patching":  # attribution patching: no held-out masks; its check is the exact one
        check = s["exact_check"]
        why = (f"This run is attribution patching (mix {esc(s['mix'])}): one forward and one backward pass per image, "
               "no masks and so no held-out LDS. Its check against the exact single-head ablation effects: median "
               f"Spearman {esc(fmt(check['spearman_median']))} over {esc(fmt(check['n_images']))} images.")
        return Built("", missing=why)
    rows = []
    for name in ("pearson", "spearman"):
        q = s[f"lds_{name}_quartiles"]
        rows.append((name.capitalize(), fmt(s[f"lds_{name}_median"]), fmt(q[0]), fmt(q[2])))
    body = table(("Correlation", "Median", "Lower quartile", "Upper quartile"), rows, id="lds-table",
                 keys=(None, "lds_median", None, None))
    body += (f"<p class=\"note\">{esc(fmt(s['n_val']))} held-out masks per image, "
             f"{esc(fmt(s['n_images']))} images.</p>")
    return Built(body, captions={
        "lds_hist": "Per-image correlation between predicted and actual target on held-out masks."})


def validation_section(inp: Inputs) -> Built:
    v = inp["validation"]
    rows = [(name.replace("_", " "), fmt(r["k80_completeness"]), fmt(r["k80_faithfulness"]),
             fmt(r["auc_completeness"]), fmt(r["auc_faithfulness"]))
            for name, r in v["rankings"].items()]
    body = table(("Ranking", "k80 completeness", "k80 faithfulness", "AUC completeness", "AUC faithfulness"),
                 rows, id="validation-table")
    body += (f"<p class=\"note\">{esc(fmt(v['n_images']))} images, {esc(fmt(v['n_heads_total']))} heads, target "
             f"{esc(v['target'])}; clean target {esc(fmt(v['mean_clean_target']))}, all heads ablated "
             f"{esc(fmt(v['mean_all_ablated_target']))}. k80 = smallest k reaching 80%.</p>")
    c1 = v["c1"]
    body += callout(f"<strong>C1</strong> {badge(claim_c1(inp.view).verdict)} ({esc(c1['rule'])}): "
                    f"{'holds' if c1['holds'] else 'does not hold'} \u2014 attribution k80 "
                    f"{esc(fmt(c1['k80_attribution']))}.")
    subset = v["subset"]
    body += callout(f"<strong>Distinct subset</strong> ({esc(subset['rule'])}): "
                    f"{'holds' if subset['holds'] else 'does not hold'} \u2014 attribution k80 "
                    f"{esc(fmt(subset['k80_attribution']))} vs random {esc(fmt(subset['k80_random']))}.")
    return Built(body, captions={
        "validation_curves": "Completeness (ablate the top-k heads) and faithfulness (keep only the top-k) for "
                             "every ranking, with accuracy."})


def attention_section(inp: Inputs) -> Built:
    return Built(captions={
        "attribution_vs_attention": "Mean attribution vs the attention mass the final token puts on image "
                                    "positions, one dot per head."})


def flow_section(inp: Inputs) -> Built:
    f = inp["flow"]
    window = f["resolved"]["window_"]
    rows = []
    for name, p in f["pairs"].items():
        curve, starts = p["curve"], p["window_starts"]
        peak, mean = p["peak_layer"], p["mean_layer"]
        at_peak = curve[starts.index(peak["value"])] if peak["value"] in starts and curve else None
        rows.append((name.replace("->", " \u2192 "),
                     fmt_ci(peak["value"], peak["lo"], peak["hi"], number=fmt_layer), fmt(at_peak),
                     fmt_ci(mean["value"], mean["lo"], mean["hi"], number=fmt_layer)))
    body = table(("Pair", "Peak layer [95% CI]", "\u0394p/p at peak", "Effect-weighted mean layer [95% CI]"), rows,
                 id="flow-table")
    images = f["images"]
    unanswerable = images.optional("unanswerable") or []  # (older runs lack it)
    skipped = (f"; {esc(fmt(len(unanswerable)))} skipped because the model cannot write their label "
               f"({esc(', '.join(map(str, f.optional('unanswerable_labels') or [])))})" if unanswerable else "")
    body += (f"<p class=\"note\">{esc(fmt(images['n_kept']))} of {esc(fmt(images['n_total']))} images "
             f"kept{skipped}; window {esc(fmt(window))} layers; effect: {esc(f['effect'])}.</p>")
    c3 = f["c3"]
    if c3["verdict"] == "not tested":
        body += callout(f"<strong>C3</strong> not tested: {esc(c3['reason'])}.")
    else:
        body += callout(f"<strong>C3</strong> {badge(claim_c3(inp.view).verdict)} (analysis verdict: "
                        f"{esc(c3['verdict'])}) {esc(c3['statistic'])}: "
                        f"{esc(fmt_ci(c3['mean'], c3['lo'], c3['hi']))} ({esc(fmt(c3['n']))} images); "
                        f"one-sided Wilcoxon p = {esc(fmt_p(c3['p_wilcoxon']))}, sign test p = "
                        f"{esc(fmt_p(c3['p_sign']))}. A positive difference means image information arrives later.")
    return Built(body, captions={
        "flow_curves": f"Relative change of the answer probability when a token-group pair is knocked out in a "
                       f"window of {fmt(window)} layers, per window start (95% band)."})


def objects_section(inp: Inputs) -> Built:
    f = inp["flow"]
    reason = objects_not_run_reason(f)
    if reason is not None:
        return Built(missing=f"The object/background knockouts were not run: {esc(reason)}.")
    rows = []
    for cond, d in f["objects"].items():
        prob, logit = d["prob"], d["logit"]
        rows.append((cond.replace("_", " "), fmt_ci(prob["mean"], prob["lo"], prob["hi"]),
                     fmt_ci(logit["mean"], logit["lo"], logit["hi"]), fmt(prob["n"])))
    body = table(("Condition", "\u0394p/p [95% CI]", "\u0394logit [95% CI]", "Images"), rows, id="objects-table")
    c4 = f["c4"]
    body += callout(f"<strong>C4</strong> {badge(claim_c4(inp.view).verdict)} (analysis verdict: "
                    f"{esc(c4['verdict'])}) object interval excludes 0: "
                    f"{esc(fmt(c4['object_excludes_zero']))}; background interval excludes 0: "
                    f"{esc(fmt(c4['background_excludes_zero']))}.")
    return Built(body, captions={
        "flow_objects": "Knock out image \u2192 text attention from object tokens, background tokens, and random "
                        "token sets of the same sizes (95% intervals).",
        "flow_token_maps": "Per-token effect of knocking out one image token, drawn over the image."})


def semantics_section(inp: Inputs) -> Built:
    s = inp["semantics"]
    factor = s["overall_factor"]
    resolved = s["resolved_parameters"]
    top_k = resolved["top_k_"]
    body = "<h3>Pair similarity per appearance factor</h3>"
    rows = []
    for name, pf in s["per_factor"].items():
        m, t = pf["mean_similarity"], pf["tests"]["class_vs_appearance"]
        rows.append((name + (" (overall)" if name == factor else ""), fmt(m["within_class"]),
                     fmt(m["within_appearance"]), fmt(m["between"]), fmt(t["difference"]),
                     fmt(t["z"]), fmt_p(t["p_value"]), pf["verdict"]))
    body += table(("Factor", "Same class", "Same factor", "Different both", "Class \u2212 factor", "z",
                   "p (permutation)", "Verdict"), rows, id="semantics-table")
    probes, pvals = s["probe_accuracy"], s["probe_p_value"]
    reps = list(dict.fromkeys(r for row in probes.values() for r in row if r != "chance"))
    body += "<h3>Linear probes (cross-validated accuracy, p against chance)</h3>"
    body += table(("Target", "Chance", *reps),
                  [(t, fmt(row["chance"]), *[f"{fmt(row[r])} (p {fmt_p(pvals[t][r])})" for r in reps])
                   for t, row in probes.items()], id="probe-table")
    jac = s["topk_jaccard"]
    if jac:
        body += f"<h3>Top-{esc(fmt(top_k))} head sets (mean Jaccard)</h3>"
        body += table(tuple(k.replace("_", " ") for k in jac), [tuple(fmt(v) for v in jac.values())],
                      id="jaccard-table")
    body += (f"<p class=\"note\">{esc(fmt(s['n_images']))} images, {len(s['classes'])} classes; "
             f"{len(s['shared_heads'])} heads are in every class's top-{esc(fmt(top_k))}.</p>")
    skipped = resolved["skipped_factors"]
    if skipped:
        body += "<p class=\"note\">Factors not analysed: " + "; ".join(
            f"{esc(k)} ({esc(v)})" for k, v in skipped.items()) + ".</p>"
    body += callout(f"<strong>C2</strong> {badge(claim_c2(inp.view).verdict)} (analysis verdict: "
                    f"{esc(s['verdict'])}) same-class vs same-{esc(factor)} pairs: "
                    f"{esc(fmt(s['within_class_similarity']))} vs {esc(fmt(s['within_appearance_similarity']))}"
                    f", permutation p = {esc(fmt_p(s['p_class_vs_appearance']))}.")
    return Built(body, captions={
        "similarity_matrix": f"Image \u00d7 image {resolved['similarity_']} similarity of head attributions, "
                             f"ordered by class and by {factor}.",
        "embedding": "2-D embedding of the per-image attribution vectors, coloured by class and appearance.",
        "class_heatmaps": "Mean attribution per class (layer \u00d7 head)."})


def routing_section(inp: Inputs) -> Built:
    r, study = inp.optional("routing"), inp.optional("study")
    skipped = study.optional("skipped") if study is not None else None  # absent in studies before routing
    why = skipped.optional("routing") if skipped is not None else None  # only where the step was skipped
    if why is not None:  # a skip outranks a routing.json left by an earlier configuration
        return Built(missing=f"{missing_note('routing')} The study skipped this step: {esc(why)}")
    if r is None:
        return Built(missing=missing_note("routing"))
    per_type = r["per_type"]
    body = (f"<p class=\"note\">The same images asked {len(r['question_types'])} types of question, one head "
            "attribution per type; the maps of the images kept under every type are compared across question types "
            "(same question, different images) and across images (same image, different questions).</p>")
    body += table(("Question type", "Question", "Clean accuracy", "Images kept", "Top heads"),
                  [(t, text(per_type[t]["question"]), fmt(per_type[t]["clean_accuracy"]),
                    fmt(per_type[t]["n_images"]),
                    ", ".join(fmt_head(layer, head) for layer, head, _ in per_type[t]["top_heads"][:5]))
                   for t in r["question_types"]], id="routing-types",
                  keys=(None, None, "routing_accuracy", "routing_images", None))
    body += kv_table([("Images kept under every type", fmt(r["n_images"]), "routing_n_images"),
                      ("Similarity, same question (different images)", fmt(r["within_question_similarity"]),
                       "routing_within_question"),
                      ("Similarity, same image (different questions)", fmt(r["within_image_similarity"]),
                       "routing_within_image"),
                      ("Similarity, different both", fmt(r["between_similarity"]), None),
                      ("p (permutation), question vs image", fmt_p(r["p_question_vs_image"]), "routing_p"),
                      ("Probe reading the question type from a map", fmt(r["probe_question_type"]),
                       "routing_probe"),
                      ("Probe chance", fmt(r["probe_question_type_chance"]), None)], "routing-table")
    poor = [t for t in r["question_types"] if isinstance(per_type[t]["clean_accuracy"], (int, float))
            and per_type[t]["clean_accuracy"] < 0.5]
    if poor:
        body += callout(f"The clean model answers fewer than half of the images correctly under "
                        f"{esc(', '.join(poor))}: every image is kept under every type, so the maps of "
                        f"{'that type' if len(poor) == 1 else 'those types'} attribute the logit of an answer the "
                        "model mostly does not give.", "warn")
    meaning = {"question": "maps of one question type are more alike than maps of one image: the question routes "
                           "the image through its own heads",
               "image": "maps of one image are more alike than maps of one question type: the image, not the "
                        "question, decides the heads",
               "neither": "neither kind of pair is reliably more alike"}
    verdict = r["verdict"]
    body += callout(f"<strong>Verdict</strong> <span data-routing-verdict=\"{esc(verdict)}\">{esc(verdict)}</span>: "
                    f"{esc(meaning.get(verdict, 'see the numbers above'))} (same question "
                    f"{esc(fmt(r['within_question_similarity']))} vs same image "
                    f"{esc(fmt(r['within_image_similarity']))}, permutation p = "
                    f"{esc(fmt_p(r['p_question_vs_image']))}; the question type is read from a map with accuracy "
                    f"{esc(fmt(r['probe_question_type']))}, chance {esc(fmt(r['probe_question_type_chance']))}).")
    return Built(body, captions={
        "routing_similarity_matrix": "Map \u00d7 map similarity of head attributions (one map per image and question "
                                     "type), ordered by question type and by image.",
        "routing_embedding": "2-D embedding of the maps, coloured by question type and by image.",
        "routing_heatmaps": "Mean attribution per question type (layer \u00d7 head)."})


def steering_verdicts(st: Doc) -> list[tuple[str, float | None, bool | None]]:
    """Per corruption (``clean`` where the sweep has none): the largest amplifying factor (> 1) of the sweep and
    whether amplifying the top attribution heads beats amplifying random heads there (higher accuracy, or the same
    accuracy and a higher mean answer logit); ``(condition, None, None)`` where the sweep has no factor above 1."""
    factors = [float(f) for f in st["factors"]]
    conditions = [c for c in st["conditions"] if c != "clean"] or ["clean"]
    amplifying = [i for i, f in enumerate(factors) if f > 1.0]
    out: list[tuple[str, float | None, bool | None]] = []
    for condition in conditions:
        if not amplifying:
            out.append((condition, None, None))
            continue
        i = max(amplifying, key=lambda j: factors[j])
        top, rand = st["curves"][condition]["attribution"], st["curves"][condition]["random"]
        acc_top, acc_rand = top["accuracy"][i], rand["accuracy"][i]
        beats = acc_top > acc_rand or (acc_top == acc_rand and top["mean_logit"][i] > rand["mean_logit"][i])
        out.append((condition, factors[i], bool(beats)))
    return out


def steering_section(inp: Inputs) -> Built:
    st = inp["steering"]
    factors, k = st["factors"], st["k"]
    rows = []
    for condition in st["conditions"]:
        for ranking in st["rankings"]:
            curve = st["curves"][condition][ranking]
            for i, factor in enumerate(factors):
                heads = f"{ranking} top-{k}" if ranking != "random" else f"random {k}"
                rows.append((condition, heads, f"{float(factor):g}", fmt(curve["accuracy"][i]),
                             fmt(curve["mean_logit"][i])))
    body = table(("Condition", "Heads", "Factor", "Accuracy", "Mean answer logit"), rows, id="steering-table",
                 keys=(None, None, None, "steering_accuracy", "steering_logit"))
    heads = "; ".join(f"{esc(r)}: {esc(', '.join(fmt_head(layer, head) for layer, head in st['heads'][r]))}"
                      for r in st["rankings"])
    body += (f"<p class=\"note\">{esc(fmt(st['n_images']))} images; factor f multiplies the steered heads' "
             f"attention on the image and renormalises (1 = the model itself, 0 = knockout ablation); factor 1 "
             f"reproduces the run's clean logits to {esc(fmt(st['identity_max_abs_diff']))}. Steered heads: "
             f"{heads}.</p>")
    sentences = []
    for condition, factor, beats in steering_verdicts(st):
        if beats is None:
            sentences.append(f"{esc(condition)}: no factor above 1 in this sweep, so amplification was not tested")
            continue
        i = [float(f) for f in factors].index(factor)
        top, rand = st["curves"][condition]["attribution"], st["curves"][condition]["random"]
        sentences.append(
            f"{esc(condition)}: amplifying the top-{esc(fmt(k))} attribution heads (factor {esc(f'{factor:g}')}) "
            f"<strong data-steering-verdict=\"{esc(condition)}\">{'beats' if beats else 'does not beat'}</strong> "
            f"amplifying {esc(fmt(k))} random heads (accuracy {esc(fmt(top['accuracy'][i]))} vs "
            f"{esc(fmt(rand['accuracy'][i]))}, mean answer logit {esc(fmt(top['mean_logit'][i]))} vs "
            f"{esc(fmt(rand['mean_logit'][i]))})")
    body += callout("<strong>Amplifying the top heads vs random heads</strong> (at the largest factor; higher "
                    "accuracy, ties broken by the mean answer logit): " + "; ".join(sentences) + ".")
    return Built(body, captions={
        "steering_accuracy": "Accuracy vs steering factor, one panel per condition (clean and each corruption), one "
                             "line per head set.",
        "steering_logit": "Mean answer logit vs steering factor, one panel per condition, one line per head set."})


# ----------------------------------------------------------------------------------------------
# the table

#: Every section of the page, in page order.
SECTIONS: tuple[Section, ...] = (
    Section("claims", "Claims of the paper vs this run", claims_section,
            reads=("attribution",),
            reads_if_present=("config", *dict.fromkeys(c.source for c in CLAIMS))),
    Section("model", "Model and data", model_section,
            reads=("attribution",), reads_if_present=("config", "study")),
    Section("attribution", "Head attribution", attribution_section,
            reads=("attribution",),
            figures=(Figure("attribution_heatmap", "figures/attribution_heatmap.png"),)),
    Section("lds", "Held-out check (linear datamodeling score)", lds_section,
            reads=("attribution",),
            figures=(Figure("lds_hist", "figures/lds_hist.png"),)),
    Section("validation", "Completeness and faithfulness", validation_section,
            reads=("validation",),
            figures=(Figure("validation_curves", "figures/validation_curves.png"),)),
    Section("attention", "Attribution vs attention weight", attention_section,
            reads=("validation",),
            figures=(Figure("attribution_vs_attention", "figures/attribution_vs_attention.png"),)),
    Section("flow", "Token-level flow (attention knockout)", flow_section,
            reads=("flow",),
            figures=(Figure("flow_curves", "flow/figures/flow_curves.png"),)),
    Section("objects", "Object and background image tokens", objects_section,
            reads=("flow",),
            figures=(Figure("flow_objects", "flow/figures/flow_objects.png"),
                     Figure("flow_token_maps", "flow/figures/flow_token_maps.png"))),
    Section("semantics", "Semantic class vs appearance", semantics_section,
            reads=("semantics",),
            figures=(Figure("similarity_matrix", "figures/similarity_matrix.png"),
                     Figure("embedding", "figures/embedding.png"),
                     Figure("class_heatmaps", "figures/class_heatmaps.png"))),
    Section("routing", "Question routing", routing_section,
            reads_if_present=("routing", "study"),
            figures=(Figure("routing_similarity_matrix", "routing/figures/routing/similarity_matrix.png"),
                     Figure("routing_embedding", "routing/figures/routing/embedding.png"),
                     Figure("routing_heatmaps", "routing/figures/routing/class_heatmaps.png"))),
    Section("steering", "Head steering", steering_section,
            reads=("steering",),
            figures=(Figure("steering_accuracy", "steering/figures/steering_accuracy.png"),
                     Figure("steering_logit", "steering/figures/steering_logit.png"))),
)

#: Section ids, in page order.
SECTION_IDS: tuple[str, ...] = tuple(s.id for s in SECTIONS)


def section_by_id(sid: str) -> Section:
    for s in SECTIONS:
        if s.id == sid:
            return s
    raise KeyError(f"no report section {sid!r}; sections: {', '.join(SECTION_IDS)}")
