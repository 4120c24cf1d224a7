"""Exactness invariants a researcher runs first on their own model (``headflow check``).

Every invariant is reported, whatever happens to the others: one that raises is reported as failed with its
error (the exception's type and first line), and the rest still run. A failure says which invariant, by how
much (the largest absolute logit difference against the tolerance) and where (the comparison that gave it).

Where state lives: :func:`run_checks` builds one engine and prepares the check images on first use, inside
the invariant that needs them first (an error there is reported by every invariant that needs them); nothing
outlives the call. The engine paths compared are recorded per invariant: the path ``run(path="auto")`` chose
and why (:meth:`~headflow.intervene.engine.InterventionEngine.prefix_path_reason`), and the forced prefix
path wherever the engine says it is valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..models.loading import LoadedModel
from .engine import Baseline, InterventionEngine, PreparedPrompt
from .spec import Intervention, Knockout

TOLERANCE = 1e-4
#: In 16-bit dtypes two exact computations of one logit may differ by their rounding: the tolerance there is this many
#: units in the last place (``torch.finfo(dtype).eps``) of the largest clean logit (measured on every tiny family:
#: at most 1 ulp in bfloat16 and float16; README "headflow check")
ULPS_16BIT = 8


def tolerance_for(dtype: torch.dtype, logit_scale: float) -> float:
    """The tolerance on logits of ``headflow check`` for a model in ``dtype`` whose clean logits reach
    ``logit_scale`` in absolute value: 1e-4 in float32 (and float64); in 16-bit dtypes
    :data:`ULPS_16BIT` ulps of ``max(1, logit_scale)``.

    >>> tolerance_for(torch.float32, 30.0), tolerance_for(torch.bfloat16, 2.0)
    (0.0001, 0.125)
    """
    if torch.finfo(dtype).bits > 16:
        return TOLERANCE
    return max(TOLERANCE, ULPS_16BIT * torch.finfo(dtype).eps * max(1.0, float(logit_scale)))
CHECK_QUESTION = "What is the main object in the image?"
#: Why ``run(path="auto")`` takes the prefix path when the engine finds nothing against it.
PREFIX_OK = ("every intervened query lies after the image, and the model's own masks let no prefix query attend past "
             "the prefix")


@dataclass(frozen=True)
class CheckResult:
    """One invariant: the largest absolute logit difference over its comparisons and whether it is within
    ``tolerance``.

    Attributes
    ----------
    name, description : str
    max_abs_diff : float or None
        Largest absolute difference of final-position logits (NaN if some logits were not finite; None if
        the invariant raised before its first comparison).
    tolerance : float
    error : str or None
        ``"<ExceptionType>: <first line of its message>"`` if the invariant raised (it then failed).
    worst : str or None
        The comparison that gave ``max_abs_diff``, e.g. ``"zero baseline, with knockouts: auto (prefix) vs full"``.
    paths : dict
        The engine paths compared: ``compared`` (list), and for invariants that run interventions ``auto``
        (the path ``run(path="auto")`` chose), ``auto_reason`` (why) and ``not_compared`` (path -> why not).
    """

    name: str
    description: str
    max_abs_diff: float | None
    tolerance: float
    error: str | None = None
    worst: str | None = None
    paths: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.error is None and self.max_abs_diff is not None and self.max_abs_diff <= self.tolerance)

    def failure(self) -> str | None:
        """Why the invariant failed, in one line (None if it passed)."""
        if self.passed:
            return None
        if self.error is not None:
            return f"{self.name} raised {self.error}"
        if self.max_abs_diff is None or not math.isfinite(self.max_abs_diff):
            return f"{self.name}: logits are not finite ({self.worst})"
        return (f"{self.name}: max |dlogit| {self.max_abs_diff:.2e} > tolerance {self.tolerance:.0e} "
                f"({self.worst})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``max_abs_diff`` is null when not finite (``failure`` then says so)."""
        diff = self.max_abs_diff if self.max_abs_diff is not None and math.isfinite(self.max_abs_diff) else None
        return {"name": self.name, "description": self.description, "passed": self.passed, "max_abs_diff": diff,
                "tolerance": self.tolerance, "error": self.error, "worst": self.worst, "paths": self.paths,
                "failure": self.failure()}


def check_image(size: int = 224, seed: int = 0) -> Image.Image:
    """A deterministic test image: a coloured disc on a gradient (no data needed)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([x, y, 1 - x], -1) * 0.6
    disc = (x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.08
    img[disc] = rng.uniform(0.3, 1.0, 3)
    return Image.fromarray((img * 255).astype(np.uint8))


def random_rows(n_layers: int, n_heads: int, n_rows: int, seed: int, knockouts: bool,
                empty_groups: Sequence[str] = ()) -> list[Intervention]:
    """Seeded random ablation masks (α = 0.3), optionally with random text-target knockouts (between groups
    that are not empty on the prompt: a knockout of an empty group is refused)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    pairs = [("image", "final"), ("image", "role"), ("question", "final"), ("image", "question"), ("system", "role")]
    pairs = [p for p in pairs if not set(p) & set(empty_groups)]
    for i in range(n_rows):
        ablate = torch.rand(n_layers, n_heads, generator=gen) < 0.3
        kos: tuple[Knockout, ...] = ()
        if knockouts:
            source, target = pairs[i % len(pairs)]
            layers = (torch.rand(n_layers, generator=gen) < 0.5).nonzero().flatten().tolist() or [0]
            heads = (torch.rand(n_heads, generator=gen) < 0.5).nonzero().flatten().tolist() or [0]
            kos = (Knockout(source, target, layers=layers, heads=heads),)
        rows.append(Intervention(ablate=ablate, knockouts=kos))
    return rows


def error_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0].strip()}" if text else type(exc).__name__


class _Shared:
    """What the invariants share (engine, prepared prompts, baselines), built on first use. A failure while
    building is kept and raised again to every invariant that needs the same thing."""

    def __init__(self, lm: LoadedModel, n_rows: int, seed: int, image: Image.Image | None) -> None:
        self.lm, self.n_rows, self.seed = lm, n_rows, seed
        self.image = image if image is not None else check_image()
        self._made: dict[str, tuple[bool, Any]] = {}

    def _get(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._made:
            try:
                self._made[key] = (True, build())
            except Exception as exc:  # noqa: BLE001 - reported by each invariant that needs it
                self._made[key] = (False, exc)
        ok, value = self._made[key]
        if not ok:
            raise value
        return value

    @property
    def engine(self) -> InterventionEngine:
        return self._get("engine", lambda: InterventionEngine(self.lm, batch_size=self.n_rows))

    @property
    def prompt(self) -> PreparedPrompt:
        return self._get("prompt", lambda: self.engine.prepare(self.image, CHECK_QUESTION))

    @property
    def mean(self) -> Baseline:
        return self._get("mean", lambda: Baseline.mean(
            [self.prompt, self.engine.prepare(check_image(seed=self.seed + 1), CHECK_QUESTION)]))

    def rows(self, seed: int, knockouts: bool) -> list[Intervention]:
        return random_rows(self.lm.n_layers, self.lm.n_heads, self.n_rows, seed, knockouts,
                           self.prompt.groups.empty() if knockouts else ())


class _Worst:
    """The largest difference over an invariant's comparisons, and which comparison gave it (NaN wins)."""

    def __init__(self) -> None:
        self.diff: float | None = None
        self.where: str | None = None

    def add(self, where: str, a: torch.Tensor, b: torch.Tensor) -> None:
        diff = _diff(a, b)
        if self.diff is None or (not math.isnan(self.diff) and not diff <= self.diff):
            self.diff, self.where = diff, where


def _compare_paths(shared: _Shared, worst: _Worst, label: str, rows: list[Intervention], baseline: Baseline,
                   reference: torch.Tensor | None = None) -> dict[str, Any]:
    """Run ``rows`` on the full path, the path ``auto`` chooses and (where valid) the forced prefix path;
    compare auto and prefix with ``reference`` (default: the full path's logits). Returns the path info."""
    engine, prompt = shared.engine, shared.prompt
    full = engine.run(prompt, rows, baseline=baseline, path="full").logits
    reference = full if reference is None else reference
    against = "full" if reference is full else "no intervention"
    if reference is not full:
        worst.add(f"{label}: full vs {against}", full, reference)
    auto = engine.run(prompt, rows, baseline=baseline, path="auto")
    worst.add(f"{label}: auto ({auto.path}) vs {against}", auto.logits, reference)
    reason = engine.prefix_path_reason(prompt, rows)
    info: dict[str, Any] = {"auto": auto.path, "auto_reason": reason or PREFIX_OK, "not_compared": {}}
    if reason is None:
        prefix = engine.run(prompt, rows, baseline=baseline, path="prefix").logits
        worst.add(f"{label}: prefix vs {against}", prefix, reference)
        info["compared"] = ["auto", "full", "prefix"]
    else:
        info["compared"] = ["auto", "full"]
        info["not_compared"] = {"prefix": reason}
    return info


def _merge(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """One path record for an invariant that compared several batches (the first batch's, plus any batch on
    which auto chose differently)."""
    merged = dict(infos[0])
    autos = sorted({i["auto"] for i in infos})
    if len(autos) > 1:
        merged["auto"] = "/".join(autos)
        merged["auto_reason"] = "; ".join(dict.fromkeys(i["auto_reason"] for i in infos))
    return merged


def _clean_vs_hf(shared: _Shared, worst: _Worst) -> dict[str, Any]:
    lm = shared.lm
    inputs, _ = lm.encode(shared.image, CHECK_QUESTION)
    with torch.no_grad():
        plain = lm.model(**inputs).logits[0, -1].float()
    worst.add("clean run vs plain HF forward", shared.prompt.clean_logits, plain)
    return {"compared": ["clean run (headflow attention, no intervention)", "plain HF forward"]}


def _identity_ablation(shared: _Shared, worst: _Worst) -> dict[str, Any]:
    prompt = shared.prompt
    return _compare_paths(shared, worst, "own keys/values", shared.rows(shared.seed, False),
                          Baseline.of_prompt(prompt), reference=prompt.clean_logits[None])


def _prefix_vs_full(shared: _Shared, worst: _Worst) -> dict[str, Any]:
    prompt, infos = shared.prompt, []
    for baseline in (shared.mean, Baseline.zero(prompt), Baseline.knockout()):
        for knock in (False, True):
            label = f"{baseline.kind} baseline, {'with' if knock else 'no'} knockouts"
            infos.append(_compare_paths(shared, worst, label, shared.rows(shared.seed + 1, knock), baseline))
    return _merge(infos)


def _same_seed(shared: _Shared, worst: _Worst) -> dict[str, Any]:
    engine, prompt, mean = shared.engine, shared.prompt, shared.mean
    rows, again = shared.rows(shared.seed, True), shared.rows(shared.seed, True)
    masks = lambda rs: torch.stack([torch.as_tensor(r.ablate).float() for r in rs])  # noqa: E731
    worst.add("ablation masks drawn twice", masks(rows), masks(again))
    if [r.knockouts for r in rows] != [r.knockouts for r in again]:
        worst.diff, worst.where = math.inf, "knockouts drawn twice differ"
        return {"compared": ["auto", "auto"]}
    first = engine.run(prompt, rows, baseline=mean)
    second = engine.run(prompt, again, baseline=mean)
    worst.add(f"auto ({first.path}) run twice", first.logits, second.logits)
    reason = engine.prefix_path_reason(prompt, rows)
    return {"compared": ["auto", "auto"], "auto": first.path, "auto_reason": reason or PREFIX_OK}


#: (name, description, measure): each measure adds its comparisons to a _Worst and returns its path info.
INVARIANTS: tuple[tuple[str, str, Callable[[_Shared, _Worst], dict[str, Any]]], ...] = (
    ("a_clean_vs_hf", "no intervention vs the plain HF forward", _clean_vs_hf),
    ("b_identity_ablation", "ablation with the head's own keys/values vs no intervention (every path)",
     _identity_ablation),
    ("c_prefix_vs_full", "the path auto chooses, and the prefix path where valid, vs the full-prompt path "
                         "(ablations, knockouts)", _prefix_vs_full),
    ("d_same_seed", "same seed gives the same masks and outputs", _same_seed),
)


def run_checks(lm: LoadedModel, *, n_rows: int = 6, seed: int = 0, image: Image.Image | None = None) -> list[CheckResult]:
    """The four invariants of ``headflow check``, each reported on its own, against :func:`tolerance_for` the model's
    dtype (1e-4 on logits in float32; 8 ulps of the largest clean logit in bfloat16/float16).

    (a) headflow's attention with no intervention equals the plain HF forward;
    (b) ablating heads with their own keys/values as the baseline equals no intervention, on the full path,
        the path ``auto`` chooses and the prefix path where it is valid;
    (c) the path ``auto`` chooses, and the forced prefix path where the engine says it is valid, equal the
        full-prompt path for random ablations (mean, zero, knockout baselines) with and without knockouts;
    (d) the same seed gives the same masks and the same outputs.

    An invariant that raises is reported with ``error`` set and ``passed`` False; the others still run.
    """
    shared = _Shared(lm, n_rows, seed, image)
    try:
        tolerance = tolerance_for(lm.dtype, float(shared.prompt.clean_logits.abs().max()))
    except Exception:  # noqa: BLE001 - the prompt's failure is reported by every invariant that needs it
        tolerance = tolerance_for(lm.dtype, 1.0)
    results = []
    for name, description, measure in INVARIANTS:
        worst = _Worst()
        try:
            paths = measure(shared, worst)
        except Exception as exc:  # noqa: BLE001 - reported, never hidden, never stopping the others
            results.append(CheckResult(name, description, worst.diff, tolerance, error=error_line(exc),
                                       worst=worst.where))
            continue
        results.append(CheckResult(name, description, worst.diff, tolerance, worst=worst.where, paths=paths))
    return results


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())
