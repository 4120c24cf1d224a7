"""How fast can a trained default model learn the ``exists`` question, from words and from images? (issue 16)

Continues training a saved default model (the shipped one unless ``--model``) on ``exists`` questions and
prints, every ``--every`` steps, one JSON line: ``exists`` accuracy on 480 analysis-stream scenes (seed 1),
split by what the probe names (the main object, a distractor, an absent class; yes/no by the larger of the
two logits), and the identification accuracy (``QUESTIONS[0]``).

``--on text``: the language model alone, the caption in its context instead of the image (as in text
pretraining); it also reports ``word_tokens``: the image prompt with each image token replaced by the LM's
input embedding of the class word of the object covering its patch ('.' where none does), i.e. what the LM
would answer if the image tokens were words; ``--on image``: the whole model on images (as in instruction tuning), where ``--text-share``
of each batch is text-only ``exists`` documents (LLaVA-1.5 mixes text-only instructions in) and
``--other-share`` the other five question types with the recipe's weights.

    python benchmarks/exists_learnability.py --on text --steps 1500 --lr 3e-4
    python benchmarks/exists_learnability.py --on image --steps 1500 --lr 3e-4 --text-share 0.33 --other-share 0.33

Uses the training module's internals (prompt ids, documents, question sampling), so it measures exactly what
the recipe trains.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoProcessor, LlavaForConditionalGeneration

import headflow.zoo.train as T
from headflow.data.default import ANALYSIS_STREAM, CLASSES, TRAIN_STREAM
from headflow.zoo import default_model_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(default_model_dir()))
    ap.add_argument("--on", choices=("text", "image"), required=True)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--text-share", type=float, default=0.0, help="image runs: share of --batch given to text-only exists documents")
    ap.add_argument("--other-share", type=float, default=0.0, help="image runs: share of --batch on the other question types")
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--n-train", type=int, default=8000)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration.from_pretrained(args.model)
    processor = AutoProcessor.from_pretrained(args.model)
    pix, prompts = T.Pixels(processor), T._Prompts(processor, model.config.image_seq_length)
    train = T.render_scenes(args.n_train, 0, TRAIN_STREAM, workers=2)
    held = T.render_scenes(480, 1, ANALYSIS_STREAM, workers=2)
    rng, gen = np.random.default_rng(3), torch.Generator().manual_seed(3)
    yes, no = prompts.word_id["yes"], prompts.word_id["no"]

    def text_doc(sc, i: int, q) -> list[int]:
        qtype, p, probe, answer = q
        return prompts.text_document(prompts.text_ids[qtype, p, probe], prompts.caption_ids(sc.captions[i]), [prompts.word_id[answer]])

    # held-out cases: per scene the main object, an absent class and (where there is one) a distractor
    er = np.random.default_rng(11)
    cases = []
    for i in range(len(held.images)):
        main_cls = CLASSES[held.attrs[i, 0]]
        absent = [CLASSES[k] for k in np.flatnonzero(~held.present[i])]
        distractors = [CLASSES[k] for k in np.flatnonzero(held.present[i]) if CLASSES[k] != main_cls]
        cases += [(i, main_cls, "main"), (i, absent[int(er.integers(len(absent)))], "absent")]
        if distractors:
            cases.append((i, distractors[int(er.integers(len(distractors)))], "distractor"))
    kinds = np.array([k for *_, k in cases])

    filler = prompts.tok.convert_tokens_to_ids(".")

    def split(logits: torch.Tensor) -> dict[str, float]:
        """Accuracy per probe kind, yes/no by the larger of the two logits."""
        said_yes = (logits[:, yes] > logits[:, no]).numpy()
        return {k: round(float((said_yes[kinds == k] == (k != "absent")).mean()), 3) for k in ("main", "distractor", "absent")}

    @torch.no_grad()
    def evaluate() -> dict:
        model.eval()
        if args.on == "text":
            rows = []
            for s in range(0, len(cases), 128):
                seqs = [text_doc(held, i, ("exists", 0, x, "yes"))[:-2] for i, x, _ in cases[s:s + 128]]
                ids, att, _ = T._pad(seqs, [1] * len(seqs), prompts.pad)
                rows.append(model(input_ids=ids, attention_mask=att).logits[torch.arange(len(ids)), att.sum(1) - 1])
            logits = torch.cat(rows)
        else:
            ids = torch.tensor([prompts.ids["exists", 0, x] for _, x, _ in cases])
            logits = T.final_logits(model, ids, pix(held.images[[i for i, *_ in cases]]), None)
        out = split(logits)
        if args.on == "text":
            # the image tokens replaced by the LM's input embedding of the class word of the object covering each
            # patch ('.' where none does): does what the LM learned from captions answer from word-like image tokens?
            ids = torch.tensor([prompts.ids["exists", 0, x] for _, x, _ in cases])
            tokens = model.get_input_embeddings().weight[prompts.class_ids + [filler]]
            patches = torch.from_numpy(held.patches[[i for i, *_ in cases]])
            embeds = T.merged_input(model, ids, tokens[patches])
            rows = [model(inputs_embeds=embeds[s:s + 128]).logits[:, -1] for s in range(0, len(embeds), 128)]
            out["word_tokens"] = split(torch.cat(rows))
        ids = torch.tensor([prompts.classic[0]] * len(held.images))
        cls = T.final_logits(model, ids, pix(held.images), None).argmax(-1).numpy()
        out["identification"] = round(float((cls == np.array(prompts.class_ids)[held.attrs[:, 0]]).mean()), 3)
        model.train()
        return out

    if args.on == "text":
        params = list(model.model.language_model.parameters()) + list(model.lm_head.parameters())
        groups = [{"params": params, "lr": args.lr}]
    else:
        params = list(model.parameters())
        vision = {id(p) for p in model.model.vision_tower.parameters()}
        groups = [{"params": [p for p in params if id(p) not in vision], "lr": args.lr},
                  {"params": [p for p in params if id(p) in vision], "lr": args.lr * T.TrainConfig().vision_lr_scale}]
    opt = torch.optim.AdamW(groups, weight_decay=T.TrainConfig().weight_decay)
    others = tuple(0.0 if t == "exists" else w for t, w in zip(T.QUESTION_TYPES, T.TrainConfig().question_weights))
    n_text = round(args.text_share * args.batch) if args.on == "image" else args.batch
    n_other = round(args.other_share * args.batch) if args.on == "image" else 0
    print(json.dumps({"step": 0, **evaluate()}), flush=True)
    model.train()
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss_sum, count = 0.0, 0
        if n_text:
            idx = torch.randint(len(train.images), (n_text,), generator=gen).numpy()
            seqs = [text_doc(train, i, q) for i, q in zip(idx.tolist(), T._sample_questions(train, idx, rng, weights=T._ONLY_EXISTS))]
            ids, att, lab = T._pad(seqs, [2] * len(seqs), prompts.pad)
            logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
            loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1), ignore_index=-100) * len(seqs)
            count += len(seqs)
        if args.on == "image":
            idx = torch.randint(len(train.images), (args.batch - n_text,), generator=gen).numpy()
            qs = (T._sample_questions(train, idx[:n_other], rng, weights=others)
                  + T._sample_questions(train, idx[n_other:], rng, weights=T._ONLY_EXISTS))
            seqs = [prompts.ids[t, p, x] + [prompts.word_id[a], prompts.eos] for t, p, x, a in qs]
            ids, att, lab = T._pad(seqs, [2] * len(seqs), prompts.pad)
            logits = model(input_ids=ids, attention_mask=att, pixel_values=pix(train.images[idx])).logits[:, :-1]
            loss_sum = loss_sum + F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1), ignore_index=-100) * len(seqs)
            count += len(seqs)
        loss = loss_sum / count
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % args.every == 0:
            print(json.dumps({"step": step, "loss": round(loss.item(), 3), **evaluate(),
                              "seconds": round(time.perf_counter() - t0)}), flush=True)


if __name__ == "__main__":
    main()
