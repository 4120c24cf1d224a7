"""The self-contained HTML report (``headflow.report.write_report``) on a real tiny study directory.

One module-scoped study on ``tiny:llava`` runs every step (attribution → validation → flow → semantics
→ report), plus a small steering sweep so that every section is present. 32 images: with fewer, the default
data has a single style, and the semantics step has no appearance factor to compare with class.
The browser check renders the report in headless Chromium.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from headflow.errors import HeadflowError
from headflow.report import SECTION_IDS, SECTIONS, MissingKeyError, render_report, write_report
from headflow.report.claims import VERDICTS
from headflow.report.fmt import fmt, fmt_ci, fmt_layer, fmt_p, fmt_pct
from headflow.report.markup import esc

pytestmark = pytest.mark.slow

ANALYSIS_SECTIONS = ("validation", "attention", "flow", "objects", "semantics", "routing", "steering")


class Page(HTMLParser):
    """Collects what the tests check: sections, images, claim rows, ``data-key`` cells, links."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, dict[str, str]] = {}
        self.images: list[dict[str, str]] = []
        self.claims: list[dict[str, str]] = []
        self.keys: dict[str, list[str]] = {}
        self.refs: list[str] = []
        self.tags: set[str] = set()
        self._key: str | None = None
        self._text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        if tag == "section":
            self.sections[a["id"]] = a
        if tag == "img":
            self.images.append(a)
        if tag == "tr" and "data-claim" in a:
            self.claims.append(a)
        for attr in ("src", "href"):
            if attr in a:
                self.refs.append(a[attr])
        if tag == "td" and "data-key" in a:
            self._key, self._text = a["data-key"], []

    def handle_data(self, data):
        if self._key is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._key is not None:
            self.keys.setdefault(self._key, []).append("".join(self._text).strip())
            self._key = None


def figure_files(run_dir: Path) -> dict[str, Path]:
    from headflow.report.run import FIGURE_DIRS

    return {str(p.relative_to(run_dir)): p for sub in FIGURE_DIRS for p in sorted((run_dir / sub).glob("*.png"))}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    from headflow.study import QUICK, run_study

    out = tmp_path_factory.mktemp("study") / "run"
    plan = replace(QUICK, images=32, masks=32, val_masks=16, validate_images=4, flow_images=4, flow_maps=1,
                   permutations=50, bootstrap=50)
    path = run_study("tiny:llava", "default", out, plan=plan, keep_wrong=True, log=lambda _: None)
    assert path == out / "report.html"
    from headflow.steering import HeadSteering

    HeadSteering(factors=[0.0, 1.0, 2.0], corrupt=["noise:0.1"], k=2, max_images=2).run(out)
    write_report(out)
    return out


@pytest.fixture(scope="module")
def page(study) -> Page:
    return Page((study / "report.html").read_text(encoding="utf-8"))


def read(run_dir: Path, rel: str) -> dict:
    return json.loads((run_dir / rel).read_text())


# ----------------------------------------------------------------------------------------------
# full study


def test_claims_table_has_c1_to_c4_with_verdicts_from_the_json(study, page):
    assert [c["data-claim"] for c in page.claims] == ["C1", "C2", "C3", "C4"]
    verdict = {c["data-claim"]: c["data-verdict"] for c in page.claims}
    assert set(verdict.values()) <= set(VERDICTS)
    c1 = read(study, "validation.json")["c1"]
    assert verdict["C1"] in (("agrees",) if c1["holds"] else ("disagrees", "inconclusive"))
    sem = read(study, "semantics.json")["verdict"]
    assert verdict["C2"] == {"class": "agrees", "appearance": "disagrees", "neither": "inconclusive"}[sem]
    flow = read(study, "flow/flow.json")
    assert verdict["C3"] == {"supported": "agrees", "contradicted": "disagrees"}.get(flow["c3"]["verdict"],
                                                                                     "inconclusive")
    assert verdict["C4"] == ("agrees" if flow["c4"]["verdict"] == "supported" else "inconclusive")
    html = (study / "report.html").read_text()
    assert html.index('id="claims"') < html.index('id="model"')  # claims come first


def test_every_section_is_present_and_every_figure_is_embedded(study, page):
    for sid in SECTION_IDS:
        assert page.sections[sid]["data-status"] == "present", sid
    files = figure_files(study)
    assert {"figures/attribution_heatmap.png", "figures/validation_curves.png", "flow/figures/flow_curves.png",
            "figures/similarity_matrix.png", "routing/figures/routing/similarity_matrix.png"} <= set(files)
    shown = {img["data-path"]: img for img in page.images}
    assert set(shown) == set(files)
    names = {f.path: f.name for entry in SECTIONS for f in entry.figures}
    for rel, path in files.items():
        img = shown[rel]
        assert "figure" in img["class"].split() and img["data-name"] == names.get(rel, path.stem)
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        assert base64.b64decode(img["src"][len(prefix):]) == path.read_bytes()


def test_report_is_self_contained(study, page):
    html = (study / "report.html").read_text()
    assert all(ref.startswith(("data:", "#")) for ref in page.refs), [r[:40] for r in page.refs]
    assert "script" not in page.tags and "link" not in page.tags
    assert not re.search(r"@import|url\(|https?://[^\s\"'<]*\.(css|js|woff2?|ttf)", html)


def test_numbers_come_from_the_json(study, page):
    summary, validation = read(study, "summary.json"), read(study, "validation.json")
    flow, sem = read(study, "flow/flow.json"), read(study, "semantics.json")
    assert page.keys["clean_accuracy"] == [f"{summary['clean_accuracy']:.1%}"]
    assert page.keys["lds_median"] == [fmt(summary["lds_pearson_median"]), fmt(summary["lds_spearman_median"])]
    assert page.keys["n_kv_heads"] == [str(read(study, "config.json")["model"]["n_kv_heads"])]
    html = (study / "report.html").read_text()
    layer, head, score = summary["top_heads"][0]
    assert f"<td>L{layer}.H{head}</td>" in html and fmt(score) in html
    r = validation["rankings"]["attribution"]
    assert f'<td class="num">{fmt(r["auc_completeness"])}</td>' in html
    p = flow["pairs"]["image->final"]["peak_layer"]
    assert fmt_ci(p["value"], p["lo"], p["hi"], number=fmt_layer) in html
    c3 = flow["c3"]
    assert fmt_ci(c3["mean"], c3["lo"], c3["hi"]) in html and f"p = {fmt_p(c3['p_wilcoxon'])}" in html
    assert f"permutation p = {fmt_p(sem['p_class_vs_appearance'])}" in html


def test_question_routing_step_and_section(study, page):
    """The study's routing step (tiny model, QUICK routing sizes): routing.json and its section's numbers."""
    from headflow.study import QUICK

    routing, timings = read(study, "routing/routing.json"), read(study, "study.json")["started_at_seconds"]
    assert list(timings) == ["attribution", "validation", "flow", "semantics", "routing", "report"]
    assert routing["verdict"] in ("question", "image", "neither")
    assert routing["question_types"] == ["class", "colour", "position", "size", "count"]  # every type with one question text
    assert routing["n_images"] == QUICK.routing_images
    for qtype, row in routing["per_type"].items():
        assert isinstance(row["clean_accuracy"], float) and 0.0 <= row["clean_accuracy"] <= 1.0, qtype
    assert page.sections["routing"]["data-status"] == "present"
    html = section_slice((study / "report.html").read_text(), "routing")
    assert f'data-routing-verdict="{routing["verdict"]}"' in html
    assert page.keys["routing_accuracy"] == [fmt(routing["per_type"][t]["clean_accuracy"])
                                             for t in routing["question_types"]]
    assert page.keys["routing_p"] == [fmt_p(routing["p_question_vs_image"])]
    assert page.keys["routing_probe"] == [fmt(routing["probe_question_type"])]


def test_a_skipped_routing_step_shows_why_and_outranks_an_old_result(study, tmp_path):
    run = copy_run(study, tmp_path / "run")
    edit_json(run, "study.json", lambda doc: doc["skipped"].update(routing="only 1 image <kept>"))
    part = section_slice(write_report(run).read_text(), "routing")
    assert 'data-status="missing"' in part and "The study skipped this step: only 1 image &lt;kept&gt;" in part
    (run / "routing" / "routing.json").unlink()
    edit_json(run, "study.json", lambda doc: doc.pop("skipped"))  # a study from before the routing step
    part = section_slice(write_report(run).read_text(), "routing")
    assert 'data-status="missing"' in part and "<code>routing/routing.json</code> is missing" in part


def test_report_is_deterministic(study):
    first = (study / "report.html").read_bytes()
    assert write_report(study).read_bytes() == first


# ----------------------------------------------------------------------------------------------
# partial directories


@pytest.fixture()
def attribution_only(study, tmp_path) -> Path:
    """A plain attribution run: its JSON and its two figures, nothing from later steps."""
    run = tmp_path / "attr"
    (run / "figures").mkdir(parents=True)
    for rel in ("summary.json", "config.json", "figures/attribution_heatmap.png", "figures/lds_hist.png"):
        shutil.copy(study / rel, run / rel)
    return run


def test_partial_run_marks_missing_sections(attribution_only):
    page = Page(write_report(attribution_only).read_text())
    for sid in ANALYSIS_SECTIONS:
        assert page.sections[sid]["data-status"] == "missing", sid
        assert "missing" in page.sections[sid]["class"].split()
    for sid in ("claims", "model", "attribution", "lds"):
        assert page.sections[sid]["data-status"] == "present", sid
    assert {c["data-verdict"] for c in page.claims} == {"not run"}
    assert sorted(img["data-name"] for img in page.images) == ["attribution_heatmap", "lds_hist"]
    html = (attribution_only / "report.html").read_text()
    missing = re.search(r'id="missing-sections" data-missing="([^"]*)"', html).group(1).split()
    assert missing == list(ANALYSIS_SECTIONS)
    assert "headflow validate" in html and "headflow semantics" in html


def test_unreadable_json_is_reported_not_fatal(attribution_only):
    (attribution_only / "validation.json").write_text("{not json")
    html = write_report(attribution_only).read_text()
    assert "Could not read the validation results" in html
    assert Page(html).sections["validation"]["data-status"] == "missing"


def test_not_a_run_directory(tmp_path):
    with pytest.raises(HeadflowError, match="no summary.json"):
        write_report(tmp_path)
    with pytest.raises(HeadflowError, match="is not a directory"):
        write_report(tmp_path / "nope")


def test_default_model_card_is_included(study, attribution_only, tmp_path, monkeypatch):
    import headflow.report.run as run_mod

    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# default\nA tiny LLaVA <trained> on the default data.\n")
    monkeypatch.setattr(run_mod, "model_card_path", lambda: card)
    # the study's own study.json (every key the report reads), as if run on the embedded default model
    (attribution_only / "study.json").write_text(json.dumps({**read(study, "study.json"), "model": "default"}))
    html = write_report(attribution_only).read_text()
    assert 'id="model-card-text"' in html and "A tiny LLaVA &lt;trained&gt; on the default data." in html


# ----------------------------------------------------------------------------------------------
# the section table


def section_slice(html: str, sid: str) -> str:
    """The HTML of ``<section id=sid>`` (sections do not nest)."""
    start = html.index(f'<section id="{sid}"')
    return html[start:html.index("</section>", start)]


def test_every_section_of_the_table_renders_on_a_full_study(study, page):
    html = (study / "report.html").read_text()
    assert SECTION_IDS == tuple(entry.id for entry in SECTIONS)
    assert [sid for sid in page.sections if sid != "other-figures"] == list(SECTION_IDS)  # page order = table order
    for entry in SECTIONS:
        assert page.sections[entry.id]["data-status"] == "present", entry.id
        part = section_slice(html, entry.id)
        assert f"<h2>{esc(entry.title)}</h2>" in part
        for fig in entry.figures:  # each listed figure is embedded inside its own section
            assert f'data-name="{fig.name}" data-path="{fig.path}"' in part, (entry.id, fig.name)
    assert "other-figures" not in page.sections  # every figure of a study belongs to some entry


def copy_run(study: Path, dst: Path) -> Path:
    """The study's result files and PNG figures (what the report reads), nothing else."""
    from headflow.report.run import FIGURE_DIRS, SOURCES

    for rel in [s.file for s in SOURCES] + [str(p.relative_to(study)) for sub in FIGURE_DIRS
                                            for p in (study / sub).glob("*.png")]:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(study / rel, dst / rel)
    return dst


def edit_json(run: Path, rel: str, change) -> None:
    doc = read(run, rel)
    change(doc)
    (run / rel).write_text(json.dumps(doc))


def pop_path(doc: dict, dotted: str, rename: bool) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        doc = doc[key]
    value = doc.pop(last)
    if rename:
        doc[last + "_renamed"] = value


@pytest.mark.parametrize("rel,key,rename", [
    ("validation.json", "rankings.random.k80_completeness", False),
    ("validation.json", "subset", True),
    ("validation.json", "c1.rule", False),
    ("flow/flow.json", "c3.p_wilcoxon", True),
    ("flow/flow.json", "objects.background.prob.n", False),
    ("flow/flow.json", "resolved.window_", True),
    ("semantics.json", "effects.class_vs_appearance.cohens_d", False),
    ("semantics.json", "resolved_parameters.skipped_factors", True),
    ("summary.json", "lds_spearman_quartiles", True),
    ("config.json", "model.n_kv_heads", False),
    ("study.json", "seconds", False),
    ("steering/steering.json", "curves.clean.random.mean_logit", True),
    ("steering/steering.json", "identity_max_abs_diff", False),
    ("routing/routing.json", "p_question_vs_image", True),
    ("routing/routing.json", "per_type", False),
])
def test_a_renamed_or_deleted_key_fails_the_report_naming_file_and_key(study, tmp_path, rel, key, rename):
    run = copy_run(study, tmp_path / "run")
    assert 'data-status="missing"' not in render_report(run)  # the untouched copy renders in full
    edit_json(run, rel, lambda doc: pop_path(doc, key, rename))
    with pytest.raises(MissingKeyError, match=re.escape(f"{rel} has no key '{key}'")) as info:
        write_report(run)
    assert isinstance(info.value, KeyError) and isinstance(info.value, HeadflowError)
    assert (info.value.file, info.value.key) == (rel, key)
    assert not (run / "report.html").exists()  # nothing half-written


def test_cli_report_names_the_missing_key(study, tmp_path):
    from typer.testing import CliRunner

    from headflow.cli import app

    run = copy_run(study, tmp_path / "run")
    edit_json(run, "validation.json", lambda doc: pop_path(doc, "rankings.random.k80_completeness", False))
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 2
    assert "validation.json has no key 'rankings.random.k80_completeness'" in result.output


def test_optional_keys_stay_optional(study, tmp_path):
    """What the writers legitimately leave out: C3 not tested, object knockouts not run (null), no reason."""
    run = copy_run(study, tmp_path / "run")

    def no_objects(flow):
        flow["c3"] = {"verdict": "not tested", "reason": "needs question->role/final and image->role/final pairs"}
        flow["objects"] = None
        flow["c4"] = {"verdict": "not tested", "reason": "no masks or no patch geometry"}
    edit_json(run, "flow/flow.json", no_objects)
    page = Page(write_report(run).read_text())
    html = (run / "report.html").read_text()
    assert page.sections["flow"]["data-status"] == "present"
    assert page.sections["objects"]["data-status"] == "missing"
    assert "The object/background knockouts were not run: no masks or no patch geometry." in html
    assert "<strong>C3</strong> not tested: needs question-&gt;role/final" in html
    assert {c["data-claim"]: c["data-verdict"] for c in page.claims}["C3"] == "not run"
    # figures of a section that is not in the run are still shown, under "Other figures"
    assert 'data-path="flow/figures/flow_objects.png"' in section_slice(html, "other-figures")
    edit_json(run, "flow/flow.json", lambda flow: flow.update(objects_skipped_reason="no patch <geometry>"))
    assert "were not run: no patch &lt;geometry&gt;." in write_report(run).read_text()


LABEL = ("<script>alert(\"x\")</script> & <b>bold</b> <img src=x onerror=alert(1)> $\\alpha$ 50% "
         "\u00fcn\u00efc\u00f6d\u00e9 \u2192 \u732b \U0001f600 '\"" + "very long label " * 60)


def test_unsafe_labels_stay_escaped(study, tmp_path):
    """Labels and factor names from the JSON (HTML, ``$``, quotes, unicode, very long) reach the page escaped."""
    run = copy_run(study, tmp_path / "run")

    def semantics(sem):
        old = sem["overall_factor"]
        sem["overall_factor"] = sem["resolved_parameters"]["overall_factor"] = LABEL
        sem["per_factor"] = {(LABEL if k == old else k): v for k, v in sem["per_factor"].items()}
        sem["probe_accuracy"][LABEL] = sem["probe_accuracy"].pop("class")
        sem["probe_p_value"][LABEL] = sem["probe_p_value"].pop("class")
        sem["resolved_parameters"]["skipped_factors"][LABEL] = LABEL

    def flow(f):
        f["pairs"] = {(LABEL if k == "role->final" else k): v for k, v in f["pairs"].items()}
        f["objects"][LABEL] = f["objects"].pop("random_object")
        f["effect"] = LABEL

    def config(c):
        c["spec"]["question"] = c["model"]["name"] = c["model"]["family"] = LABEL

    edit_json(run, "semantics.json", semantics)
    edit_json(run, "flow/flow.json", flow)
    edit_json(run, "config.json", config)
    edit_json(run, "study.json", lambda s: s.update(model=LABEL, data=LABEL))
    edit_json(run, "validation.json",
              lambda v: v["rankings"].update({LABEL: v["rankings"].pop("attribution_per_image")}))
    html = write_report(run).read_text()
    page = Page(html)
    assert not {"script", "b"} & page.tags and sum(img.get("src") == "x" for img in page.images) == 0
    assert not any("onerror" in img for img in page.images)  # the label sits in alt text, not as an attribute
    assert html.count(esc(LABEL)) >= 10  # title, header, model card, tables, captions, notes: all whole, escaped
    assert re.search(r"<title>headflow report: (.*?)</title>", html).group(1) == esc(LABEL)
    assert "<script" not in html and "<b>" not in html and "&lt;script&gt;" in html
    assert all(page.sections[sid]["data-status"] == "present" for sid in SECTION_IDS)


def test_adding_a_section_is_one_entry_and_one_builder(study, attribution_only, monkeypatch):
    import headflow.report.html as page_mod
    from headflow.report.sections import Built, Figure, Section

    shutil.copy(study / "figures/lds_hist.png", attribution_only / "figures/extra_plot.png")
    html = write_report(attribution_only).read_text()
    assert 'data-path="figures/extra_plot.png"' in section_slice(html, "other-figures")  # not lost before

    def extra_section(inp):
        s = inp["attribution"]
        return Built(f"<p>{esc(s['n_images'])} images <i>x</i></p>", captions={"extra_plot": "An <extra> plot."})

    def reads_undeclared(inp):
        return Built(str(inp["validation"]))

    entry = Section("extra", "Extra <section>", extra_section, reads=("attribution",),
                    figures=(Figure("extra_plot", "figures/extra_plot.png"),))
    needs_flow = Section("needs-flow", "Needs flow", extra_section, reads=("attribution", "flow"))
    monkeypatch.setattr(page_mod, "SECTIONS", (*SECTIONS, entry, needs_flow))
    html = write_report(attribution_only).read_text()
    page = Page(html)
    assert page.sections["extra"]["data-status"] == "present" and "other-figures" not in page.sections
    part = section_slice(html, "extra")
    assert "<h2>Extra &lt;section&gt;</h2>" in part and 'data-path="figures/extra_plot.png"' in part
    n_images = read(attribution_only, "summary.json")["n_images"]
    assert "An &lt;extra&gt; plot." in part and f"<p>{n_images} images <i>x</i></p>" in part
    assert page.sections["needs-flow"]["data-status"] == "missing"
    assert "<code>flow/flow.json</code> is missing. Run <code>headflow flow --out DIR/flow</code>" in \
        section_slice(html, "needs-flow")
    assert 'href="#extra"' in html and "needs-flow" in re.search(r'data-missing="([^"]*)"', html).group(1)

    monkeypatch.setattr(page_mod, "SECTIONS", (*SECTIONS, Section("bad", "Bad", reads_undeclared,
                                                                  reads=("attribution",))))
    with pytest.raises(LookupError, match="'bad' reads 'validation'"):
        render_report(attribution_only)


def test_formatting():
    assert (fmt(0.99931), fmt(7), fmt(None), fmt(float("nan")), fmt(True)) == ("0.999", "7", "n/a", "n/a", "yes")
    assert (fmt(1.2e-5), fmt(0.0), fmt_pct(0.03125), fmt_p(2.3e-10), fmt_p(0.0196)) == \
        ("1.20e-05", "0", "3.1%", "2.3e-10", "0.020")
    assert (fmt_layer(1.0), fmt_layer(0.076), fmt_ci(1, None, None)) == ("1", "0.08", "1")


# ----------------------------------------------------------------------------------------------
# head steering on the embedded default model


@pytest.fixture(scope="module")
def steered(tmp_path_factory) -> Path:
    """A patching run of the default model on 6 images and a steering sweep over it (3 factors, 2 corruptions)."""
    from typer.testing import CliRunner

    from headflow.cli import app

    run = tmp_path_factory.mktemp("steer") / "run"
    for argv in (["attribute", "--model", "default", "--images", "6", "--keep-wrong", "--method", "patching",
                  "--n-check", "0", "--out", str(run)],
                 ["steer", str(run), "--factors", "0,1,2", "--corrupt", "noise:0.3,blur:2", "--k", "3"],
                 ["report", str(run)]):
        res = CliRunner().invoke(app, argv)
        assert res.exit_code == 0, res.output
    return run


def test_steering_section_numbers_come_from_steering_json(steered):
    from headflow.report.doc import Doc
    from headflow.report.sections import steering_verdicts

    st = read(steered, "steering/steering.json")
    html = (steered / "report.html").read_text()
    page = Page(html)
    assert page.sections["steering"]["data-status"] == "present"
    part = section_slice(html, "steering")
    for name in ("steering_accuracy", "steering_logit"):
        assert f'data-name="{name}" data-path="steering/figures/{name}.png"' in part
    order = [(c, r, i) for c in st["conditions"] for r in st["rankings"] for i in range(len(st["factors"]))]
    assert len(order) == 3 * 3 * 3
    assert page.keys["steering_accuracy"] == [fmt(st["curves"][c][r]["accuracy"][i]) for c, r, i in order]
    assert page.keys["steering_logit"] == [fmt(st["curves"][c][r]["mean_logit"][i]) for c, r, i in order]
    # the sentence per corruption is read from the numbers at factor 2
    for condition in ("noise:0.3", "blur:2"):
        top, rand = st["curves"][condition]["attribution"], st["curves"][condition]["random"]
        beats = top["accuracy"][2] > rand["accuracy"][2] or (
            top["accuracy"][2] == rand["accuracy"][2] and top["mean_logit"][2] > rand["mean_logit"][2])
        verdict = re.search(rf'data-steering-verdict="{re.escape(condition)}">([^<]*)<', part).group(1)
        assert verdict == ("beats" if beats else "does not beat"), condition
    assert 'data-steering-verdict="clean"' not in part
    # the verdict follows the numbers: swap the two head sets and it flips (unless they tie exactly)
    before = {c: (f, b) for c, f, b in steering_verdicts(Doc(st, "steering.json"))}
    assert set(before) == {"noise:0.3", "blur:2"} and {f for f, _ in before.values()} == {2.0}
    for curves in st["curves"].values():
        curves["attribution"], curves["random"] = curves["random"], curves["attribution"]
    for condition, _, beats in steering_verdicts(Doc(st, "steering.json")):
        a, r = st["curves"][condition]["attribution"], st["curves"][condition]["random"]
        tie = (a["accuracy"][2], a["mean_logit"][2]) == (r["accuracy"][2], r["mean_logit"][2])
        assert beats is (False if tie else not before[condition][1]), condition
    # a sweep without an amplifying factor says so instead of guessing
    no_amp = {**st, "factors": [0.0, 0.5, 1.0]}
    assert {b for _, _, b in steering_verdicts(Doc(no_amp, "steering.json"))} == {None}


def test_missing_steering_is_marked_not_run(steered, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(steered, run)
    shutil.rmtree(run / "steering")
    html = write_report(run).read_text()
    assert Page(html).sections["steering"]["data-status"] == "missing"
    assert "<code>steering/steering.json</code> is missing. Run <code>headflow steer DIR</code>" in \
        section_slice(html, "steering")


# ----------------------------------------------------------------------------------------------
# browser


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


PROBE = ("<script>window.addEventListener('load', function () { var n = 0, im = document.images;"
         " for (var i = 0; i < im.length; i++) { if (im[i].complete && im[i].naturalWidth > 0) n++; }"
         " document.title = 'decoded ' + n + '/' + im.length; });</script>")


def test_report_renders_in_headless_chromium(study, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium); the browser check needs it.")
    probe = tmp_path / "report_probe.html"
    probe.write_text((study / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert 'id="claims-table"' in dom and all(f'data-claim="C{i}"' in dom for i in range(1, 5))
    n = len(figure_files(study))
    title = re.search(r"<title>(.*?)</title>", dom).group(1)
    assert title == f"decoded {n}/{n}", title
    assert "Uncaught" not in done.stderr
