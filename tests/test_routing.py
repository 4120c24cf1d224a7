"""Question-conditioned head attribution (issue 16 item 5): one attribution per question type on the same images,
then the semantics analysis with the question type as the class and the image as the factor."""

import numpy as np
import pytest

from headflow import HeadflowError
from headflow.attribution import AttributionResult
from headflow.data import load_dataset
from headflow.data.default import DefaultDataset
from headflow.semantics import QuestionRouting, RoutingResult
from headflow.semantics.routing import answers_for

QUESTIONS = {"class": "What is the main object in the image? Answer in one word.",
             "size": "What size is the main object?"}
FAST = {"keep_wrong": True, "n_masks": 48, "n_val": 8}


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    from headflow import load_model

    out = tmp_path_factory.mktemp("routing")
    data = load_dataset("default", n=8, seed=0)
    result = QuestionRouting(load_model("default"), questions=QUESTIONS, attribution=FAST,
                             semantics={"n_permutations": 99}).run(data, out=out)
    return out, data, result


def test_each_type_is_an_attribution_run_and_the_maps_are_stacked_as_they_are(routed):
    out, data, result = routed
    assert result.question_types == ("class", "size") and result.n_images == 8
    stacked = np.asarray(result.semantics.vectors)
    for k, qtype in enumerate(result.question_types):
        run = AttributionResult.load(out / "by_question" / qtype)
        assert run.config["spec"]["question"] == QUESTIONS[qtype]
        labels = run.images.set_index("id")["label"]
        want = answers_for(data, qtype, None)
        assert [labels[ex.id] for ex in data] == want  # the type's own answers are its labels
        row = {i: n for n, i in enumerate(run.used_images["id"])}
        order = [row[ex.id] for ex in data]
        np.testing.assert_array_equal(stacked[8 * k:8 * (k + 1)], run.attributions[order].reshape(8, -1))
    assert list(result.semantics.labels) == ["class"] * 8 + ["size"] * 8
    assert list(result.semantics.factor_values["image"]) == [ex.id for ex in data] * 2
    assert result.verdict in ("question", "image", "neither")
    assert {"class": "question", "appearance": "image", "neither": "neither"}[result.semantics.verdict] == result.verdict


def test_the_result_saves_loads_and_plots_itself(routed):
    out, _, result = routed
    again = RoutingResult.load(out)
    assert again.to_dict() == result.to_dict()
    assert again.per_type["size"]["question"] == QUESTIONS["size"]
    assert all(p.exists() for p in again.plot())


def test_answers_come_from_the_caller_the_dataset_the_labels_or_a_factor():
    data = load_dataset("default", n=4, seed=0)
    assert answers_for(data, "class", None) == [ex.label for ex in data]
    assert answers_for(data, "size", None) == [ex.factors["size"] for ex in data]
    assert answers_for(data, "size", {"size": ["a", "b", "c", "d"]}) == ["a", "b", "c", "d"]

    class WithAnswers(list):
        def answers(self, qtype):
            return [f"{qtype}{i}" for i in range(len(self))]

    assert answers_for(WithAnswers(data), "colour", None) == ["colour0", "colour1", "colour2", "colour3"]
    assert answers_for(data, "colour", None) == data.answers("colour")  # world 2 answers every question type
    world1 = DefaultDataset(n=4, world=1)
    with pytest.raises(HeadflowError, match="No answers for question type 'colour'"):
        answers_for(world1, "colour", None)


def test_the_answerable_questions_of_a_dataset():
    from headflow.data import ListDataset
    from headflow.data.base import Example
    from headflow.data.default import PHRASINGS
    from headflow.semantics.routing import answerable_questions

    canonical = {t: PHRASINGS[t][0] for t in PHRASINGS}
    world1, world2 = DefaultDataset(n=4, world=1), load_dataset("default", n=4, seed=0)
    assert answerable_questions(world1) == {t: canonical[t] for t in ("class", "position", "size")}
    assert answerable_questions(world2) == {t: canonical[t] for t in ("class", "colour", "position", "size", "count")}
    assert world2.answers("count") == [world2.scene(i).answer("count") for i in range(4)]
    plain = ListDataset("plain", [Example(ex.id, ex.image, ex.label) for ex in world1])  # no factors
    assert answerable_questions(plain) == {"class": canonical["class"]}


def test_bad_parameters_are_one_line():
    with pytest.raises(HeadflowError, match="must map at least 2 question types"):
        QuestionRouting(None, questions={"class": "What?"}).check()
    with pytest.raises(HeadflowError, match="'progress' is not one"):
        QuestionRouting(None, questions=QUESTIONS, attribution={"progress": False}).check()
    with pytest.raises(HeadflowError, match="'question' is not one"):
        QuestionRouting(None, questions=QUESTIONS, attribution={"question": "x"}).check()
    with pytest.raises(HeadflowError, match="'factors' is not one"):
        QuestionRouting(None, questions=QUESTIONS, semantics={"factors": ["style"]}).check()


def test_route_command(tmp_path):
    import json

    from typer.testing import CliRunner

    from headflow.cli import app

    runner = CliRunner()
    args = ["route", "--images", "6", "--ask", f"class={QUESTIONS['class']}", "--ask", f"size={QUESTIONS['size']}",
            "--masks", "48", "--val-masks", "8", "--keep-wrong", "--n-permutations", "49", "--out", str(tmp_path / "r")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "r" / "routing.json").read_text())
    assert saved["question_types"] == ["class", "size"] and f"verdict {saved['verdict']}" in res.output
    bad = runner.invoke(app, ["route", "--ask", "size", "--ask", "class=x", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "--ask takes TYPE=QUESTION" in bad.output
    one = runner.invoke(app, ["route", "--ask", "class=x", "--out", str(tmp_path / "c")])
    assert one.exit_code == 2 and "at least 2 question types" in one.output
