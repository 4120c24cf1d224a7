"""The phenomenon the default model must show, measured with headflow's own engine.

``headflow model-card [MODEL]`` recomputes the four numbers of the model card on a fresh held-out
set (a data seed the model never trained on):

1. held-out accuracy (greedy first answer token == class word);
2. accuracy with image→text attention knocked out in **all** LM layers (text queries after the
   image may not attend image positions);
3. the lowest accuracy with that knockout in any **single** LM layer;
4. the largest single-head share: the answer-logit drop from ablating one head (mean baseline,
   that head's text queries only) divided by the drop from ablating every head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..executor import map_images
from ..method import DEFAULT_BATCH_SIZE, DEFAULT_QUESTION
from ..intervene import Baseline, Intervention, InterventionEngine, Knockout
from ..models.loading import LoadedModel

#: The analysis/training seeds of the default data are small integers; this one is never used there.
HELD_OUT_SEED = 987_654
IMAGE_TO_TEXT = ("question", "role", "final")


@dataclass(frozen=True)
class Phenomena:
    """Measured phenomenon numbers and the targets they are checked against."""

    n_images: int
    chance: float
    accuracy: float
    accuracy_knockout_all_layers: float
    accuracy_knockout_single_layer: list[float]
    min_accuracy_knockout_single_layer: float
    max_single_head_share: float
    single_head_share: list[list[float]]
    mean_logit_drop_all_heads: float

    @property
    def checks(self) -> dict[str, bool]:
        return {
            "accuracy >= 0.95": self.accuracy >= 0.95,
            "knockout all layers <= chance + 0.05": self.accuracy_knockout_all_layers <= self.chance + 0.05,
            "knockout any single layer >= 0.50": self.min_accuracy_knockout_single_layer >= 0.50,
            "any single head <= 25% of all-heads drop": self.max_single_head_share <= 0.25,
        }

    def to_dict(self) -> dict:
        return {**asdict(self), "checks": self.checks}


def measure_phenomena(lm: LoadedModel, n_images: int = 480, seed: int = HELD_OUT_SEED,
                      question: str = DEFAULT_QUESTION, batch_size: int | str = DEFAULT_BATCH_SIZE) -> Phenomena:
    """Measure the four numbers on ``n_images`` fresh images of the default data."""
    from ..data import load_dataset

    data = load_dataset("default", n=n_images, seed=seed)
    engine = InterventionEngine(lm, batch_size=batch_size)
    spell = lm.answers(question)  # the default model's words are single word-level tokens: first token = word
    prompts, answers = [], []
    for ex in tqdm(data, desc="model card: clean runs", unit="image"):
        prompt = engine.prepare(ex.image, question)
        prompts.append(prompt)
        answers.append(spell.resolve(ex.label, prompt.clean_logits).token_id)
    baseline = Baseline.mean(prompts)
    n_layers, n_heads = lm.n_layers, lm.n_heads
    rows = [Intervention(knockouts=tuple(Knockout("image", t) for t in IMAGE_TO_TEXT))]
    rows += [Intervention(knockouts=tuple(Knockout("image", t, layers=[layer]) for t in IMAGE_TO_TEXT))
             for layer in range(n_layers)]
    rows += [Intervention(ablate=torch.ones(n_layers, n_heads, dtype=torch.bool))]
    eye = torch.eye(n_layers * n_heads, dtype=torch.bool).view(-1, n_layers, n_heads)
    rows += [Intervention(ablate=m) for m in eye]
    correct = np.zeros((len(prompts), 2 + n_layers))
    drops_all = np.zeros(len(prompts))
    drops_single = np.zeros((len(prompts), n_layers * n_heads))

    def record(i: int, logits: torch.Tensor) -> None:
        prompt, answer = prompts[i], answers[i]
        predicted = logits.argmax(-1)
        correct[i, 0] = float(prompt.clean_logits.argmax() == answer)
        correct[i, 1:] = (predicted[: 1 + n_layers] == answer).float().numpy()
        clean = float(prompt.clean_logits[answer])
        drops_all[i] = clean - float(logits[1 + n_layers, answer])
        drops_single[i] = clean - logits[2 + n_layers:, answer].numpy()

    map_images(_intervened_logits, enumerate(prompts), n_items=len(prompts), on_result=record,
               local_state=(engine, rows, baseline), desc="model card: interventions")
    share = drops_single.mean(0) / drops_all.mean()
    per_layer = correct[:, 2:].mean(0)
    return Phenomena(
        n_images=len(prompts), chance=1.0 / len(data.classes), accuracy=float(correct[:, 0].mean()),
        accuracy_knockout_all_layers=float(correct[:, 1].mean()),
        accuracy_knockout_single_layer=[float(a) for a in per_layer],
        min_accuracy_knockout_single_layer=float(per_layer.min()),
        max_single_head_share=float(share.max()), single_head_share=share.reshape(n_layers, n_heads).tolist(),
        mean_logit_drop_all_heads=float(drops_all.mean()))


def _intervened_logits(state, prompt) -> torch.Tensor:
    """Final logits of every intervention row on one prepared prompt."""
    engine, rows, baseline = state
    return engine.run(prompt, rows, baseline=baseline).logits
