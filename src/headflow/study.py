"""The whole study in one call: attribution → validation → token flow → semantics → question routing → report.

``headflow study`` runs it on any model and dataset; ``headflow demo`` is the same on the embedded
default model and data. One run directory holds everything: the attribution run at its root
(``summary.json``, ``validation.json``, ``semantics.json``), the flow run in ``flow/``, the question-routing
run in ``routing/`` (``routing.json``, one attribution run per question type in ``by_question/``, figures in
``routing/figures/routing/``), figures in ``figures/`` and ``flow/figures/``, ``study.json`` (plan, timings,
the steps skipped and why) and ``report.html``. Each step resumes, or is loaded when its
configuration is the same as a finished one's (each method checks its own configuration: a step that
finished with the same parameters is loaded, an unfinished one resumes, a different one is refused).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import HeadflowError, RunIntegrityError, WriteError
from .method import DEFAULT_BATCH_SIZE
from .store import run_lock, write_json


@dataclass(frozen=True)
class StudyPlan:
    """Sizes of each step (images, masks, permutations).

    ``routing_images``, ``routing_masks`` and ``routing_val_masks``: the question-routing step's images (the
    first of the dataset) and its attribution masks per image (training and held-out), for every question type.
    """

    images: int
    masks: int | None
    val_masks: int
    validate_images: int
    flow_images: int
    flow_maps: int
    permutations: int
    bootstrap: int
    routing_images: int
    routing_masks: int
    routing_val_masks: int


#: ≥ 8 images per (class, style) cell of the default data (16 classes × 3 styles × 8).
#: Question routing runs one attribution per question type (3 on the default data's world 1: class, position,
#: size), i.e. types × images × (masks + held-out masks) forward passes. The main attribution is 384 × (512 + 256)
#: ≈ 295k; routing at 3 × 96 × (256 + 32) ≈ 83k adds under a third of that (measured 48 images × 256 masks in
#: 11 s on one CPU thread: about 75 s), so the full demo (6.4 minutes before) stays well under 10 minutes. 96 images
#: give 6 per class for the image-vs-question comparison; 256 masks fit the top heads of the 48-head default model
#: well enough to compare maps; the 32 held-out masks (the minimum is 8) only feed each type's LDS, which the
#: routing report does not show. Flow runs on all 384 images: it is the cheapest step (384 images in 24 s), and C4's
#: object effect only counts images whose object covers a whole token (59 of 96 on the default model), so at 96
#: its interval was the widest of the study (issue 16: [-10.5 %, +0.01 %], inconclusive by a hair).
FULL = StudyPlan(images=384, masks=None, val_masks=256, validate_images=96, flow_images=384, flow_maps=4,
                 permutations=1000, bootstrap=1000, routing_images=96, routing_masks=256, routing_val_masks=32)
#: Routing on QUICK: 12 images × (48 + 8) masks per type, seconds on CPU.
QUICK = StudyPlan(images=48, masks=96, val_masks=48, validate_images=12, flow_images=12, flow_maps=2,
                  permutations=200, bootstrap=200, routing_images=12, routing_masks=48, routing_val_masks=8)


def run_study(model: str, data: str, out: str | Path, *, plan: StudyPlan = FULL, seed: int = 0, data_seed: int = 0,
              batch_size: int | str = DEFAULT_BATCH_SIZE, device: str = "cpu", dtype: str | None = None,
              keep_wrong: bool = False, log: Callable[[str], None] = print,
              placement: dict[str, Any] | None = None) -> Path:
    """Run every analysis into ``out`` and write ``out/report.html``; returns the report path.

    ``seed`` seeds every analysis (the mask design, the random ranking, the bootstrap and the permutations);
    ``data_seed`` the dataset. ``placement``: :func:`~headflow.models.load_model`'s ``device_map``,
    ``max_memory`` and ``offload_folder`` (one model over several devices). Re-running resumes: each step checks its configuration against what ``out``
    holds (see the module docstring).
    """
    from .models import load_model

    out = Path(out)
    lm = load_model(model, device=device, dtype=dtype, **(placement or {}))
    with run_lock(out):  # one writer per study directory (each step locks it again: the lock is re-entrant)
        return _steps(lm, model, data, out, plan, seed, data_seed, batch_size, keep_wrong, log)


def _steps(lm, model: str, data: str, out: Path, plan: StudyPlan, seed: int, data_seed: int,
           batch_size: int | str, keep_wrong: bool, log: Callable[[str], None]) -> Path:
    from .attribution import HeadAttribution, Validation
    from .data import load_dataset
    from .flow import TokenFlow
    from .semantics import SemanticAnalysis

    started = time.time()
    steps = ["attribution", "validation", "flow", "semantics", "routing", "report"]
    timings: dict[str, float] = {}
    skipped: dict[str, str] = {}  # step -> why it was skipped (study.json "skipped"; the report shows it)

    def step(name: str) -> None:
        timings[name] = round(time.time() - started, 1)
        log(f"[{steps.index(name) + 1}/{len(steps)}] {name} ... (elapsed {time.time() - started:.0f}s)")

    attribution = HeadAttribution(lm, n_masks=plan.masks, n_val=plan.val_masks, seed=seed, keep_wrong=keep_wrong,
                                  batch_size=batch_size)
    validation = Validation(lm, seed=seed, batch_size=batch_size, max_images=plan.validate_images)
    flow = TokenFlow(lm, n_bootstrap=plan.bootstrap, seed=seed, keep_wrong=keep_wrong, n_maps=plan.flow_maps,
                     batch_size=batch_size)
    semantics = SemanticAnalysis(n_permutations=plan.permutations, seed=seed)
    for method in (attribution, validation, flow, semantics):
        method.check()  # every step's parameters, before the first step starts
    try:
        dataset = load_dataset(data, n=plan.images, seed=data_seed)
        # the first routing_images of the same data (load_dataset's record reloads exactly these)
        routed = load_dataset(data, n=min(plan.routing_images, len(dataset)), seed=data_seed)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise HeadflowError(str(exc)) from None
    routing, no_routing = routing_step(lm, routed, plan, seed, batch_size)
    if routing is not None:
        routing.check()
    step("attribution")
    attribution.run(dataset, out=out).plot()
    step("validation")
    validation.run(out, dataset=dataset)
    step("flow")
    flow.run([dataset[i] for i in range(min(plan.flow_images, len(dataset)))], out=out / "flow")
    step("semantics")
    try:
        semantics.run(out)
    except HeadflowError as exc:  # e.g. too few images to cross class with appearance
        log(f"semantics skipped: {exc}")
        skipped["semantics"] = str(exc)
    step("routing")
    try:
        if routing is None:
            raise HeadflowError(no_routing)
        routing.run(routed, out=out / "routing").plot()
    except (RunIntegrityError, WriteError):  # a damaged run directory or a refused write is no reason to skip
        raise
    except HeadflowError as exc:  # fewer than 2 question types, too few images kept under every type, ...
        log(f"routing skipped: {exc}")
        skipped["routing"] = str(exc)
    step("report")
    write_json(out / "study.json", {"model": model, "data": data, "plan": asdict(plan), "seed": seed,
                                    "data_seed": data_seed, "started_at_seconds": timings,
                                    "seconds": round(time.time() - started, 1), "skipped": skipped})
    from .report import write_report

    path = write_report(out)
    log(f"done in {time.time() - started:.0f}s")
    return path


def routing_step(lm, dataset, plan: StudyPlan, seed: int, batch_size: int | str) -> tuple[Any, str | None]:
    """``(QuestionRouting, None)``: the study's question routing on ``dataset`` (not run yet); or ``(None, why)``,
    ``why`` one line, where the dataset answers fewer than two question types with one question text for every
    image (:func:`~headflow.semantics.routing.answerable_questions`)."""
    from .semantics import QuestionRouting
    from .semantics.routing import answerable_questions

    questions = answerable_questions(dataset)
    if len(questions) < 2:
        named = ", ".join(questions) or "none"
        return None, (f"the data answers fewer than 2 question types with one question for every image "
                      f"(answerable: {named}); question routing needs the labels plus at least one factor named like "
                      "a question type (colour, position, size, count) or the dataset's own answers(type).")
    # keep_wrong=True whatever the study's: the comparison needs the same images under every type, and a type the
    # model answers poorly (a model only ever asked one kind of question answers every question as that one)
    # would otherwise keep no image at all. Each type's map then attributes the logit of the dataset's answer; the report shows
    # each type's clean accuracy next to the verdict, and warns where it is low.
    return QuestionRouting(lm, questions=questions,
                           attribution={"n_masks": plan.routing_masks, "n_val": plan.routing_val_masks, "seed": seed,
                                        "keep_wrong": True, "batch_size": batch_size},
                           semantics={"n_permutations": plan.permutations, "seed": seed}), None
