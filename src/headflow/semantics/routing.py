"""Question-conditioned head attribution: does a different question route the same image through different heads?

The same images are asked several types of question (the main object's class, its colour, its position, ...). One
head attribution per question type (:class:`~headflow.attribution.HeadAttribution`, each in its own run directory)
gives every image one head map per question. The maps of the images kept under every type are then analysed with
the semantics machinery (:class:`~headflow.semantics.SemanticAnalysis`), the question type in the role of the class
and the image in the role of the appearance factor: similarity of maps across types vs across images, the
permutation test between them, linear probes that read the question type (and the image) from a map. The verdict
is ``"question"`` when maps of one question type are more alike than maps of one image, ``"image"`` the reverse,
``"neither"`` otherwise.

Where state lives: a :class:`QuestionRouting` holds the model (or its spec) and the requested parameters; a run
lives in its directory: ``by_question/<type>/`` (each an attribution run, resumable as such), ``routing/`` (the
semantics result) and ``routing.json``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..data.base import Dataset, Example
from ..errors import HeadflowError
from ..method import Method, Result, provenance
from ..store import read_json, write_json
from .params import RoutingParams

__all__ = ["QuestionRouting", "RoutingResult", "Relabelled", "answerable_questions"]

#: what the semantics verdict means here (class -> question type, appearance -> image)
VERDICTS = {"class": "question", "appearance": "image", "neither": "neither"}


class Relabelled(Dataset):
    """``dataset`` with each example's label replaced by its answer to one question type (images, ids, factors
    and masks unchanged)."""

    def __init__(self, dataset: Sequence[Example], labels: Sequence[str], question_type: str) -> None:
        if len(labels) != len(dataset):
            raise HeadflowError(f"The answers to question type {question_type!r} are {len(labels)} for "
                                f"{len(dataset)} images; give one answer per image.")
        self._data, self._labels = dataset, [str(x) for x in labels]
        self.name = f"{getattr(dataset, 'name', 'custom')}[{question_type}]"
        self.classes = sorted(set(self._labels))
        self.factor_names = list(getattr(dataset, "factor_names", []) or [])
        args = getattr(dataset, "load_args", None)
        self.load_args = {**args, "question_type": question_type} if args else None

    def __len__(self) -> int:
        return len(self._data)

    def _get(self, index: int) -> Example:
        ex = self._data[index]
        return Example(ex.id, ex.image, self._labels[index], dict(ex.factors), ex.mask)


def answers_for(dataset: Sequence[Example], question_type: str,
                answers: Mapping[str, Sequence[str]] | None) -> list[str]:
    """One answer per image to ``question_type``: from ``answers``, else the dataset's own ``answers(type)``, else
    the labels (type ``"class"``) or the factor of that name."""
    if answers is not None and question_type in answers:
        return [str(x) for x in answers[question_type]]
    own: Callable[[str], Sequence[str]] | None = getattr(dataset, "answers", None)
    if callable(own):
        try:
            return [str(x) for x in own(question_type)]
        except (KeyError, ValueError) as exc:  # the dataset's own answers() refuses the type
            raise HeadflowError(f"No answers for question type {question_type!r}: {exc}") from None
    if question_type == "class":
        return [ex.label for ex in dataset]
    if all(question_type in ex.factors for ex in dataset):
        return [ex.factors[question_type] for ex in dataset]
    raise HeadflowError(f"No answers for question type {question_type!r}: the dataset has no such factor and no "
                        "answers(question_type). Pass answers={type: [one answer per image]}.")


def answerable_questions(dataset: Sequence[Example]) -> dict[str, str]:
    """The question types ``dataset`` can be asked with one question text for every image, type -> question.

    Candidates are the default data's question types (:data:`~headflow.data.default.QUESTION_TYPES`), each with
    its canonical phrasing (phrasing 0 of :data:`~headflow.data.default.PHRASINGS`); a type whose question names
    something per image (``exists``: "Is there a key ...?") is left out, and so is every type the dataset has no
    answers for (:func:`answers_for`: its own ``answers(type)``, the labels for ``class``, else a factor of that
    name). The embedded data's world 1 answers ``class``, ``position`` and ``size``; world 2 also ``colour`` and ``count``; a
    folder dataset without factors only ``class``.
    """
    from ..data.default import PHRASINGS, QUESTION_TYPES

    questions = {}
    for qtype in QUESTION_TYPES:
        text = PHRASINGS[qtype][0]
        if "{" in text:  # filled in per image
            continue
        try:
            answers_for(dataset, qtype, None)
        except (HeadflowError, KeyError, ValueError):  # a dataset's own answers() may refuse an unknown type
            continue
        questions[qtype] = text
    return questions


@dataclass(frozen=True)
class RoutingResult(Result):
    """A finished question-routing run.

    Attributes
    ----------
    question_types : tuple of str
    n_images : int
        Images kept under every question type (answered correctly by the clean model unless ``keep_wrong``).
    per_type : dict
        Per question type: ``question``, ``n_images`` kept, ``clean_accuracy``, ``top_heads`` (its attribution run's).
    verdict : str
        ``"question"``, ``"image"`` or ``"neither"`` (the semantics verdict with type as class, image as factor).
    semantics : SemanticResult
        The full analysis (similarities, permutation tests, probes) of the stacked maps.
    """

    run_dir: Path
    question_types: tuple[str, ...]
    n_images: int
    per_type: dict[str, dict[str, Any]]
    verdict: str
    semantics: Any
    provenance: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        s = self.semantics
        return {"question_types": list(self.question_types), "n_images": self.n_images, "per_type": self.per_type,
                "verdict": self.verdict,
                "within_question_similarity": s.within_class_similarity,
                "within_image_similarity": s.within_appearance_similarity,
                "between_similarity": s.between_similarity,
                "p_question_vs_image": s.p_class_vs_appearance,
                "probe_question_type": s.probes["class"]["attribution"].accuracy,
                "probe_question_type_chance": s.probes["class"]["attribution"].chance,
                "provenance": self.provenance}

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        self.semantics.save(out / "routing")
        write_json(out / "routing.json", self.to_dict())
        return out / "routing.json"

    @classmethod
    def load(cls, out: str | Path) -> "RoutingResult":
        from .result import SemanticResult

        out = Path(out)
        if not (out / "routing.json").is_file():
            raise HeadflowError(f"{out} holds no question-routing result (no routing.json); run QuestionRouting "
                                "with out pointing there first.")
        d = read_json(out / "routing.json")
        return cls(out, tuple(d["question_types"]), int(d["n_images"]), d["per_type"], d["verdict"],
                   SemanticResult.load(out / "routing"), d["provenance"])

    def plot(self, figures_dir: str | Path | None = None) -> list[Path]:
        """The semantics figures of the stacked maps (similarity matrix ordered by question type, embedding)."""
        return self.semantics.plot(Path(figures_dir) if figures_dir else self.run_dir / "figures" / "routing")


class QuestionRouting(Method):
    """One head attribution per question type on the same images, then type vs image (module docstring).

    ``QuestionRouting(model, questions={"class": "What is the main object?", "colour": "What colour is it?"})
    .run(dataset, out=DIR, answers=None)``. ``attribution`` and ``semantics`` hold parameters passed on to
    :class:`~headflow.attribution.HeadAttribution` (every type alike; ``question`` is each type's) and
    :class:`~headflow.semantics.SemanticAnalysis` (``factors`` is ``["image"]``); their defaults are those
    methods'. The answers to each type come from ``answers`` or the dataset (:func:`answers_for`).
    """

    Params = RoutingParams
    stage = "routing"

    def run(self, data: Sequence[Example], *, out: str | Path | None = None, runner: Any = None,
            answers: Mapping[str, Sequence[str]] | None = None) -> RoutingResult:
        from ..attribution import HeadAttribution
        from .analysis import SemanticAnalysis

        params = self.check()
        if len(data) == 0:
            raise HeadflowError("The dataset is empty; pass at least one image.")
        out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="headflow-routing-"))
        labelled = {t: Relabelled(data, answers_for(data, t, answers), t) for t in params.questions}
        runs = {t: HeadAttribution(self.model, **{**params.attribution, "question": q}).run(
                    labelled[t], out=out / "by_question" / t, runner=runner)
                for t, q in params.questions.items()}
        kept = [set(r.used_images["id"]) for r in runs.values()]
        first = next(iter(runs.values())).used_images["id"].tolist()
        ids = [i for i in first if all(i in k for k in kept)]
        if len(ids) < 2:
            raise HeadflowError(f"Only {len(ids)} image(s) are kept under every question type, too few to compare; "
                                "use more images or keep_wrong=True in attribution.")
        maps, types, images = [], [], []
        for t, r in runs.items():
            row = {i: n for n, i in enumerate(r.used_images["id"])}
            maps.append(r.attributions[[row[i] for i in ids]])
            types += [t] * len(ids)
            images += ids
        analysis = SemanticAnalysis(**{**params.semantics, "factors": ["image"]})
        semantics = analysis.fit(np.concatenate(maps), types, {"image": images})
        per_type = {t: {"question": params.questions[t], "n_images": int(r.summary["n_images"]),
                        "clean_accuracy": float(r.summary["clean_accuracy"]),
                        "top_heads": r.summary["top_heads"][:10]} for t, r in runs.items()}
        result = RoutingResult(out, tuple(params.questions), len(ids), per_type,
                               VERDICTS.get(semantics.verdict, semantics.verdict), semantics,
                               provenance("QuestionRouting", params=params.model_dump(mode="json"),
                                          resolved={"n_images_common": len(ids)}, model=None,
                                          data={"question_types": list(params.questions)}))
        result.save(out)
        return result
