"""The whole study in one call: attribution → validation → token flow → semantics → report.

``headflow study`` runs it on any model and dataset; ``headflow demo`` is the same on the embedded
default model and data. One run directory holds everything: the attribution run at its root
(``summary.json``, ``validation.json``, ``semantics.json``), the flow run in ``flow/``, figures in
``figures/`` and ``flow/figures/``, and ``report.html``. Each step resumes, or is loaded when its
configuration is the same as a finished one's (each method checks its own configuration: a step that
finished with the same parameters is loaded, an unfinished one resumes, a different one is refused).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import HeadflowError
from .method import DEFAULT_BATCH_SIZE
from .store import run_lock, write_json


@dataclass(frozen=True)
class StudyPlan:
    """Sizes of each step (images, masks, permutations)."""

    images: int
    masks: int | None
    val_masks: int
    validate_images: int
    flow_images: int
    flow_maps: int
    permutations: int
    bootstrap: int


#: ≥ 8 images per (class, style) cell of the default data (16 classes × 3 styles × 8)
FULL = StudyPlan(images=384, masks=None, val_masks=256, validate_images=96, flow_images=96, flow_maps=4,
                 permutations=1000, bootstrap=1000)
QUICK = StudyPlan(images=48, masks=96, val_masks=48, validate_images=12, flow_images=12, flow_maps=2,
                  permutations=200, bootstrap=200)


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
    steps = ["attribution", "validation", "flow", "semantics", "report"]
    timings: dict[str, float] = {}

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
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise HeadflowError(str(exc)) from None
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
    step("report")
    write_json(out / "study.json", {"model": model, "data": data, "plan": asdict(plan), "seed": seed,
                                    "data_seed": data_seed, "started_at_seconds": timings,
                                    "seconds": round(time.time() - started, 1)})
    from .report import write_report

    path = write_report(out)
    log(f"done in {time.time() - started:.0f}s")
    return path
