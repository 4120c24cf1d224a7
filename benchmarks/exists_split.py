"""Where a model's `exists` answers are right: main-object, distractor and absent-class probes.

``python benchmarks/exists_split.py [MODEL_DIR] [--n 480] [--seed 1] [--phrasing 0]``: for each analysis-stream
scene of data seed ``--seed``, asks "is there a X?" with X = the main object's class (answer yes), each distractor's
class (yes) and one absent class (no, drawn by the scene's index), and prints the accuracy per kind of probe
(greedy first answer token, the model's own chat template). Default model: the embedded one.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from headflow.data.default import CLASSES, question_for, render_scene
from headflow.models.loading import default_model_dir
from headflow.zoo.train import prompt_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=str(default_model_dir()))
    ap.add_argument("--n", type=int, default=480)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--phrasing", type=int, default=0)
    args = ap.parse_args()
    model = AutoModelForImageTextToText.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    processor.tokenizer.padding_side = "left"  # the last position is the answer position in every row
    rows: list[tuple[str, np.ndarray, str, str]] = []  # (kind, image, question, answer)
    for i in range(args.n):
        sc = render_scene(args.seed, i)
        labels = [o.label for o in sc.objects]
        absent = [c for c in CLASSES if c not in labels]
        for kind, probe in [("main object", labels[0])] + [("distractor", d) for d in labels[1:]] + [("absent", absent[i % len(absent)])]:
            q, a = question_for(sc, "exists", args.phrasing, probe)
            rows.append((kind, sc.image, q, a))
    right: dict[str, list[bool]] = {}
    for start in range(0, len(rows), 64):
        chunk = rows[start:start + 64]
        prompts = [prompt_text(processor, q) for _, _, q, _ in chunk]
        batch = processor(images=[im for _, im, _, _ in chunk], text=prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            pred = model(**batch).logits[:, -1].argmax(-1)
        for (kind, _, _, a), w in zip(chunk, processor.tokenizer.convert_ids_to_tokens(pred.tolist())):
            right.setdefault(kind, []).append(w == a)
    for kind, r in right.items():
        print(f"{kind:12s} {100 * np.mean(r):5.1f} %  ({len(r)} probes)")


if __name__ == "__main__":
    main()
