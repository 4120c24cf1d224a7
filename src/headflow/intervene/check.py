"""Exactness invariants a researcher runs first on their own model (``headflow check``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from ..models.loading import LoadedModel
from .engine import Baseline, InterventionEngine
from .spec import Intervention, Knockout

TOLERANCE = 1e-4
CHECK_QUESTION = "What is the main object in the image?"


@dataclass(frozen=True)
class CheckResult:
    """One invariant: the largest absolute logit difference and whether it is within ``tolerance``."""

    name: str
    description: str
    max_abs_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(self.max_abs_diff <= self.tolerance)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def check_image(size: int = 224, seed: int = 0) -> Image.Image:
    """A deterministic test image: a coloured disc on a gradient (no data needed)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([x, y, 1 - x], -1) * 0.6
    disc = (x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.08
    img[disc] = rng.uniform(0.3, 1.0, 3)
    return Image.fromarray((img * 255).astype(np.uint8))


def random_rows(n_layers: int, n_heads: int, n_rows: int, seed: int, knockouts: bool) -> list[Intervention]:
    """Seeded random ablation masks (α = 0.3), optionally with random text-target knockouts."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    pairs = [("image", "final"), ("image", "role"), ("question", "final"), ("image", "question"), ("system", "role")]
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


def run_checks(lm: LoadedModel, *, n_rows: int = 6, seed: int = 0, image: Image.Image | None = None) -> list[CheckResult]:
    """The four invariants of ``headflow check`` (fp32 tolerance 1e-4 on logits).

    (a) headflow's attention with no intervention equals the plain HF forward;
    (b) ablating heads with their own keys/values as the baseline equals no intervention;
    (c) the prefix-reuse path equals the full-prompt path for random ablations and knockouts;
    (d) the same seed gives the same masks and the same outputs.
    """
    image = image if image is not None else check_image()
    engine = InterventionEngine(lm, batch_size=n_rows)
    prompt = engine.prepare(image, CHECK_QUESTION)
    inputs, _ = lm.encode(image, CHECK_QUESTION)
    with torch.no_grad():
        plain = lm.model(**inputs).logits[0, -1].float()
    results = [CheckResult("a_clean_vs_hf", "no intervention vs the plain HF forward",
                           _diff(prompt.clean_logits, plain), TOLERANCE)]
    rows = random_rows(lm.n_layers, lm.n_heads, n_rows, seed, knockouts=False)
    own = Baseline.of_prompt(prompt)
    diffs = [_diff(engine.run(prompt, rows, baseline=own, path=p).logits, prompt.clean_logits[None])
             for p in ("full", "prefix")]
    results.append(CheckResult("b_identity_ablation", "ablation with the head's own keys/values vs no intervention",
                               max(diffs), TOLERANCE))
    worst = 0.0
    other = engine.prepare(check_image(seed=seed + 1), CHECK_QUESTION)
    mean = Baseline.mean([prompt, other])
    for baseline in (mean, Baseline.zero(prompt), Baseline.knockout()):
        for knock in (False, True):
            batch = random_rows(lm.n_layers, lm.n_heads, n_rows, seed + 1, knockouts=knock)
            full = engine.run(prompt, batch, baseline=baseline, path="full").logits
            fast = engine.run(prompt, batch, baseline=baseline, path="prefix").logits
            worst = max(worst, _diff(full, fast))
    results.append(CheckResult("c_prefix_vs_full", "prefix-reuse path vs full-prompt path (ablations, knockouts)",
                               worst, TOLERANCE))
    first = engine.run(prompt, random_rows(lm.n_layers, lm.n_heads, n_rows, seed, True), baseline=mean).logits
    again = engine.run(prompt, random_rows(lm.n_layers, lm.n_heads, n_rows, seed, True), baseline=mean).logits
    results.append(CheckResult("d_same_seed", "same seed gives the same masks and outputs", _diff(first, again),
                               TOLERANCE))
    return results


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())
