"""Can instruction tuning teach the LM ``exists`` when the image tokens are words, and what stops it when they
are the real ones? (issue 16)

Instruction-tunes the language model alone (the vision side frozen: tower and projector) from a state after
alignment written by ``python -m headflow.zoo.train --cache FILE`` (``FILE`` and its ``.data.npz``), with the
recipe's question sampling, and prints every ``--every`` steps the answer accuracy per question type on the
training batches (mean of the last 200) and ``exists`` split by what the probe names (main object,
distractor, absent class; last 300 ``exists`` questions). ``--tokens`` says what the LM reads at the image
positions:

- ``real``: the projector's tokens; ``real-scaled``: the same, each at the mean norm of the class words' input
  embeddings (the projector's tokens are 14-43 times longer than word embeddings);
- ``words``: on every patch an object covers, the input embedding of its class word (as it is now; the LM's
  embeddings move with training), elsewhere the ``<image>`` token's; ``words-fixed``: the same with the
  embeddings frozen at their values before tuning; ``words-colour``: as ``words-fixed``, but the main
  object's patches hold the sum of its class and colour words' unit embeddings (at the class words' norm);
- ``words-real-empty``: the fixed class words on object patches, the real tokens (word norm) elsewhere;
  ``words-real-erased``: the same with 16 class directions projected out of the other patches' tokens (per
  class, the mean background token of scenes holding it minus of scenes without it; 2,000 scenes);
- ``real-null-empty``: the real tokens (word norm) on object patches, ``<image>``'s embedding elsewhere;
  ``real-noise-empty``: the same plus fresh Gaussian noise on the empty patches, at cosine about 0.93 to
  ``<image>``'s embedding (varied, but carrying nothing);
- ``real-presence``: an oracle, the real tokens (word norm) plus, on every token, the scene's class set: the sum
  of the present classes' unit word embeddings, normalised, at ``--presence-mix`` word norms (0.5: cosine about
  0.45 to each token). Whether the LM learns ``exists`` when every token says which classes the scene holds;
  ``real-global``: the same class set on one extra token before the real ones (word norm x ``--presence-mix``),
  as a kept CLS token (``vision_feature_select_strategy="full"``) would carry it, and nothing added to the others;
- ``anneal``: a curriculum, ``--anneal-from`` (``words-fixed`` or ``words-colour``) for the first
  ``--anneal-hold`` steps, then a linear blend toward ``real-scaled`` over ``--anneal-ramp`` steps, then that
  alone: whether a match learned on exact words carries over to the real tokens (``train
  --instruct-scaffold-steps`` does the same inside the whole recipe).

``--size FIELD=N,...`` (as ``train --size`` takes it) gives the model another shape: the cache's (a state after
alignment written with that ``train --size``), or with ``--text-stage`` a fresh LM text-pretrained here by the recipe's text
stage (then only the ``words*`` modes, which need no projector). ``--colour-mix A`` weighs the colour word in
``words-colour`` (1: as much as the class word).

``--pull W`` first continues alignment (LM frozen) for ``--pull-steps`` with the caption loss plus
``W * (1 - cos)`` between every object patch's token and its class word's embedding, and, with
``--pull-background B``, ``B * (1 - cos)`` between every other patch's token and the ``<image>`` token's embedding
(one shared token for "nothing here"); with ``--pull-colour``, the main object's patches are pulled toward the
sum of its class and colour words' (unit) embeddings instead, so its colour stays on its own patches;
``--pull-presence W`` adds ``W * (1 - cos)`` between the mean image token and the scene's class set (as in
``real-presence``), or, with ``--presence-per-token``, between every token and it; ``--presence-words`` instead
pulls only each token's cosines to the 16 class words toward the oracle's (at half a word norm; ``100 W x`` their
squared error), leaving the rest of the token to the caption loss.

``--describe P`` makes a fraction ``P`` of the rows ``Describe the image.`` -> the caption (loss on the caption;
token accuracy printed), as LLaVA mixes descriptions into instruction tuning. Before tuning, the script prints how
well the LM's input tells a distractor's presence: AUC of the image tokens' cosine to its class word (max and mean
over the tokens; distractor classes against absent ones, 512 scenes).

    python benchmarks/exists_backgrounds.py --cache runs/c1.align.pt --tokens words --steps 2000
    python benchmarks/exists_backgrounds.py --cache runs/c1.align.pt --tokens words-colour --size text_hidden=192,text_mlp=576 --text-stage
    python benchmarks/exists_backgrounds.py --cache runs/c1.align.pt --tokens real-presence
    python benchmarks/exists_backgrounds.py --cache runs/th6.align.pt --size text_rope_theta=1000000 --tokens anneal \
        --anneal-from words-colour --anneal-hold 2000 --anneal-ramp 1500 --steps 5000
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F

from headflow.data.default import CLASSES, QUESTION_TYPES
from headflow.zoo import train as T
from headflow.zoo.build import build_config, build_processor

TOKENS = ("real", "real-scaled", "words", "words-fixed", "words-colour", "words-real-empty", "words-real-erased",
          "real-null-empty", "real-noise-empty", "real-presence", "real-global", "anneal")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True, help="state after alignment (train --cache FILE)")
    ap.add_argument("--tokens", choices=TOKENS, default="real")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--weights", default="3,1,1,1.5,3,3", help="question weights in QUESTION_TYPES order")
    ap.add_argument("--distractor-probes", type=float, default=0.5)
    ap.add_argument("--pull", type=float, default=0.0)
    ap.add_argument("--pull-steps", type=int, default=600)
    ap.add_argument("--pull-background", type=float, default=0.0)
    ap.add_argument("--pull-colour", action="store_true")
    ap.add_argument("--pull-presence", type=float, default=0.0, help="pull the mean image token toward the sum of the "
                    "present classes' unit word embeddings (the scene's class set, carried by every token on average)")
    ap.add_argument("--fresh-lm", action="store_true", help="a randomly initialised LM (no text stage) on the cached vision side")
    ap.add_argument("--colour-mix", type=float, default=1.0, help="words-colour: weight of the colour word in the sum")
    ap.add_argument("--size", default="", metavar="FIELD=N,...", help="the model's shape, as train --size takes it (the "
                    "cache's, or with --text-stage a fresh LM's)")
    ap.add_argument("--text-stage", action="store_true", help="a fresh LM, text-pretrained here by the recipe's text stage "
                    "(only with --tokens words*: the cache's projector does not fit another LM)")
    ap.add_argument("--describe", type=float, default=0.0, help="fraction of rows that are 'Describe the image.' -> caption "
                    "(loss on the caption), as LLaVA mixes descriptions into instruction tuning")
    ap.add_argument("--presence-per-token", action="store_true", help="--pull-presence on every token, not their mean")
    ap.add_argument("--presence-words", action="store_true", help="--pull-presence on each token's cosines to the 16 "
                    "class words only (100 x squared error to the oracle's at half a word norm), the rest of the token free")
    ap.add_argument("--presence-mix", type=float, default=0.5, help="real-presence: norm of the added class set, in word norms")
    ap.add_argument("--anneal-from", choices=("words-fixed", "words-colour"), default="words-fixed",
                    help="anneal: what the LM reads first")
    ap.add_argument("--anneal-hold", type=int, default=1500, help="anneal: steps on --anneal-from before the blend")
    ap.add_argument("--anneal-ramp", type=int, default=1500, help="anneal: steps of the blend toward real-scaled")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from transformers import LlavaForConditionalGeneration

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = T.TrainConfig()
    if args.text_stage and args.tokens not in ("words", "words-fixed", "words-colour"):
        ap.error(f"--text-stage needs --tokens words, words-fixed or words-colour. Got {args.tokens!r} instead.")
    if args.size:
        cfg = dataclasses.replace(cfg, size=T._parse_size(ap, args.size, cfg.size))
    proc = build_processor(cfg.size, world=2)
    model = LlavaForConditionalGeneration(build_config(proc.tokenizer, cfg.size))
    if not args.text_stage:
        state = torch.load(args.cache, weights_only=False)["state"]
        if args.fresh_lm:  # keep the fresh model's own language model (and head), take the vision side from the cache
            state = {k: v for k, v in state.items() if "language_model" not in k and "lm_head" not in k}
        model.load_state_dict(state, strict=not args.fresh_lm)
    prompts, pix = T._Prompts(proc, cfg.size.n_image_tokens), T.Pixels(proc)
    with np.load(args.cache.removesuffix(".pt") + ".data.npz") as z:
        sc = T.Scenes(z["images"], z["attrs"], z["present"], z["captions"].tolist(), z["probes"].tolist(), z["patches"])
    if args.text_stage:
        t0 = time.time()
        loss = T._stage_text(model, sc, prompts, cfg, torch.Generator().manual_seed(0), np.random.default_rng(0))
        n_lm = sum(p.numel() for p in model.model.language_model.parameters())
        print(f"text stage ({n_lm / 1e6:.2f} M LM parameters): loss {loss:.4f}, {time.time() - t0:.0f}s", flush=True)
    lm = list(model.model.language_model.parameters()) + list(model.lm_head.parameters())
    emb = model.get_input_embeddings()
    fixed = emb.weight.detach().clone()
    word_of_patch = torch.tensor(prompts.class_ids + [prompts.image_token_id])  # patch label -> token id
    word_norm = fixed[prompts.class_ids].norm(dim=-1).mean()
    colour_of_patch = torch.tensor(prompts.colour_ids + [prompts.image_token_id])  # patch colour -> token id
    gen, rng, noise_gen = torch.Generator().manual_seed(0), np.random.default_rng(0), torch.Generator().manual_seed(1)
    if args.pull > 0 or args.pull_presence > 0:
        targets = torch.cat([fixed[prompts.class_ids], fixed[prompts.image_token_id][None]])
        colours = F.normalize(fixed[prompts.colour_ids], dim=-1) if args.pull_colour else None
        pull(model, sc, pix, prompts, cfg, targets, args.pull, args.pull_background, args.pull_steps, gen, colours,
             args.pull_presence, "words" if args.presence_words else args.presence_per_token)

    erase = None
    if args.tokens == "words-real-erased":  # the background's class directions: present-minus-absent means, per class
        with torch.no_grad():
            idx = np.arange(2000)
            real = torch.cat([T.image_tokens(model, pix(sc.images[i:i + 200])) for i in range(0, 2000, 200)])
        real = real / real.norm(dim=-1, keepdim=True) * word_norm
        bg = torch.from_numpy(sc.patches[idx] == len(CLASSES))
        mean_bg = (real * bg[..., None]).sum(1) / bg.sum(1, keepdim=True).clamp(min=1)
        has = torch.from_numpy(sc.present[idx])
        dirs = torch.stack([mean_bg[has[:, c]].mean(0) - mean_bg[~has[:, c]].mean(0) for c in range(len(CLASSES))], 1)
        erase = torch.linalg.qr(dirs).Q  # (D, 16) orthonormal

    step_now = [0]  # the tuning step, for the anneal curriculum

    def image_positions(idx: np.ndarray) -> torch.Tensor:
        if args.tokens != "anneal":
            return tokens_of(args.tokens, idx)
        alpha = min(1.0, max(0.0, (step_now[0] - args.anneal_hold) / max(args.anneal_ramp, 1)))
        if alpha == 0.0:
            return tokens_of(args.anneal_from, idx)
        return (1 - alpha) * tokens_of(args.anneal_from, idx) + alpha * tokens_of("real-scaled", idx)

    def tokens_of(mode: str, idx: np.ndarray) -> torch.Tensor:
        patches = torch.from_numpy(sc.patches[idx])
        objects = (patches < len(CLASSES))[..., None]
        if mode == "words":
            return emb(word_of_patch[patches])
        words = fixed[word_of_patch[patches]]
        if mode == "words-fixed":
            return words
        if mode == "words-colour":
            colour = torch.from_numpy(sc.patch_colours[idx])
            on_main = (colour < len(prompts.colour_ids))[..., None]
            both = F.normalize(words, dim=-1) + args.colour_mix * F.normalize(fixed[colour_of_patch[colour]], dim=-1)
            return torch.where(on_main, F.normalize(both, dim=-1) * word_norm, words)
        with torch.no_grad():
            real = T.image_tokens(model, pix(sc.images[idx]))
        if mode == "real":
            return real
        real = real / real.norm(dim=-1, keepdim=True) * word_norm
        if mode == "real-scaled":
            return real
        if mode in ("real-presence", "real-global"):  # oracle: the scene's class set on every token / one more
            present = torch.from_numpy(sc.present[idx]).float() @ F.normalize(fixed[prompts.class_ids], dim=-1)
            present = F.normalize(present, dim=-1)[:, None] * word_norm * args.presence_mix
            return real + present if mode == "real-presence" else torch.cat([present, real], 1)
        if mode == "words-real-empty":
            return torch.where(objects, words, real)
        if mode == "words-real-erased":
            kept = real - (real @ erase) @ erase.T
            return torch.where(objects, words, kept / kept.norm(dim=-1, keepdim=True) * word_norm)
        null = fixed[prompts.image_token_id].expand_as(real)
        if mode == "real-noise-empty":  # noise of norm 0.4x the token's: cosine about 0.93
            noise = torch.randn(real.shape, generator=noise_gen)
            null = null + noise / noise.norm(dim=-1, keepdim=True) * null.norm(dim=-1, keepdim=True) * 0.4
        return torch.where(objects, real, null)  # real-null-empty, real-noise-empty

    noise_state = noise_gen.get_state()  # the diagnostic leaves the tuning's noise draws as they were
    with torch.no_grad():  # what the LM's input says about a distractor's presence before any tuning
        idx = np.arange(512)
        toks = torch.cat([image_positions(idx[i:i + 128]) for i in range(0, len(idx), 128)])
        cos = F.normalize(toks, dim=-1) @ F.normalize(fixed[prompts.class_ids], dim=-1).T  # (N, T, 16)
        present = torch.from_numpy(sc.present[idx])
        not_main = torch.ones_like(present)
        not_main[torch.arange(len(idx)), torch.from_numpy(sc.attrs[idx, 0]).long()] = False
        print("a distractor's presence from the image tokens' cosine to its class word, AUC (vs absent classes): "
              + ", ".join(f"{name} {_auc(agg[not_main], present[not_main]):.3f}"
                          for name, agg in (("max over tokens", cos.max(1).values), ("mean over tokens", cos.mean(1)))),
              flush=True)
    noise_gen.set_state(noise_state)

    weights = tuple(float(w) for w in args.weights.split(","))
    opt, sched = T._optimizer([(lm, cfg.instruct_lr)], cfg, args.steps)
    model.train()
    hits: dict[str, list[float]] = {t: [] for t in QUESTION_TYPES}
    kinds: list[tuple[str, float]] = []
    caption_hits: list[float] = []
    t0 = time.time()
    for step in range(args.steps):
        step_now[0] = step
        idx = torch.randint(len(sc.images), (cfg.instruct_batch,), generator=gen).numpy()
        qs = T._sample_questions(sc, idx, rng, weights=weights, distractor_probes=args.distractor_probes)
        describe = rng.random(len(qs)) < args.describe if args.describe > 0 else np.zeros(len(qs), bool)
        seqs, n_loss = [], []
        image_id = prompts.image_token_id
        more = (lambda ids: ids[:ids.index(image_id)] + [image_id] + ids[ids.index(image_id):]) \
            if args.tokens == "real-global" else (lambda ids: ids)  # one more image position
        for r, ((t, p, x, a), i) in enumerate(zip(qs, idx.tolist())):
            if describe[r]:
                cap = prompts.caption_ids(sc.captions[i]) + [prompts.eos]
                seqs.append(more(prompts.align_ids) + cap)
                n_loss.append(len(cap))
            else:
                seqs.append(more(prompts.ids[t, p, x]) + [prompts.word_id[a], prompts.eos])
                n_loss.append(2)
        ids, att, lab = T._pad(seqs, n_loss, prompts.pad)
        logits = model(inputs_embeds=T.merged_input(model, ids, image_positions(idx)), attention_mask=att).logits[:, :-1]
        target = lab[:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
        T._step(opt, sched, loss, lm)
        if describe.any():
            keep = (target != -100) & torch.from_numpy(describe)[:, None]
            caption_hits.append(float((logits.argmax(-1)[keep] == target[keep]).float().mean()))
        first = (target != -100).float().argmax(1)
        ok = (logits[torch.arange(len(idx)), first].argmax(-1) == target[torch.arange(len(idx)), first]).tolist()
        for (t, _, probe, answer), o, i, d in zip(qs, ok, idx, describe):
            if d:
                continue
            hits[t].append(float(o))
            if t == "exists":
                main_ = sc.attrs[i, 0] == CLASSES.index(probe)
                kinds.append(("absent" if answer == "no" else "main" if main_ else "distractor", float(o)))
        if (step + 1) % args.every == 0:
            last = kinds[-300:]
            split = " ".join(f"{np.mean([o for k, o in last if k == n]):.2f}" for n in ("main", "distractor", "absent"))
            print(step + 1, f"{time.time() - t0:.0f}s", " ".join(f"{t[:4]} {np.mean(h[-200:]):.2f}" for t, h in hits.items() if h),
                  "| exists main/distractor/absent", split,
                  f"| caption tokens {np.mean(caption_hits[-100:]):.2f}" if caption_hits else "", flush=True)


def _auc(score: torch.Tensor, label: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(label.numpy(), score.numpy()))


def pull(model, sc, pix, prompts, cfg, targets: torch.Tensor, weight: float, background: float, steps: int, gen,
         colours: torch.Tensor | None = None, presence: float = 0.0, per_token: bool | str = False) -> None:
    """More alignment (LM frozen): caption loss + ``weight * (1 - cos)`` of object patches to their class word
    (``targets[:16]``) + ``background * (1 - cos)`` of the other patches to ``targets[16]``; with ``colours``
    (unit colour-word embeddings) the main object's patches aim at its unit class word plus its colour word."""
    lm = list(model.model.language_model.parameters()) + list(model.lm_head.parameters())
    for p in lm:
        p.requires_grad_(False)
    proj, vision = list(model.model.multi_modal_projector.parameters()), list(model.model.vision_tower.parameters())
    opt, sched = T._optimizer([(proj, cfg.align_lr), (vision, cfg.align_lr * cfg.align_vision_lr_scale)], cfg, steps)
    model.train()
    for step in range(steps):
        idx = torch.randint(len(sc.images), (cfg.align_batch,), generator=gen).numpy()
        caps = [prompts.caption_ids(sc.captions[i]) + [prompts.eos] for i in idx.tolist()]
        ids, att, lab = T._pad([prompts.align_ids + c for c in caps], [len(c) for c in caps], prompts.pad)
        feats = T.image_tokens(model, pix(sc.images[idx]))
        logits = model(inputs_embeds=T.merged_input(model, ids, feats), attention_mask=att).logits[:, :-1]
        caption = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1), ignore_index=-100)
        patches = torch.from_numpy(sc.patches[idx])
        named = patches < len(CLASSES)
        aim = targets[patches]
        if colours is not None:
            pc = torch.from_numpy(sc.patch_colours[idx])
            on_main = pc < len(colours)
            aim = torch.where(on_main[..., None], F.normalize(aim, dim=-1) + colours[pc.clamp(max=len(colours) - 1)], aim)
        cosines = F.cosine_similarity(feats, aim, dim=-1)
        cos = cosines[named]
        loss = caption + weight * (1 - cos).mean() + background * (1 - cosines[~named]).mean()
        if presence > 0:
            class_set = torch.from_numpy(sc.present[idx]).float() @ F.normalize(targets[:len(CLASSES)], dim=-1)
            if per_token == "words":  # only each token's cosines to the class words, as the oracle's at half a word norm
                unit = F.normalize(targets[:len(CLASSES)], dim=-1)
                aim_cos = 0.45 * F.normalize(class_set, dim=-1) @ unit.T  # (B, 16)
                got = F.normalize(feats, dim=-1) @ unit.T  # (B, T, 16)
                set_cos = F.cosine_similarity(feats, class_set[:, None], dim=-1).mean(1)
                loss = loss + presence * 100 * (got - aim_cos[:, None]).pow(2).mean()
            else:
                set_cos = (F.cosine_similarity(feats, class_set[:, None], dim=-1).mean(1) if per_token
                           else F.cosine_similarity(feats.mean(1), class_set, dim=-1))
                loss = loss + presence * (1 - set_cos).mean()
        T._step(opt, sched, loss, proj + vision)
        if (step + 1) % 100 == 0:
            print(f"pull {step + 1}: caption loss {caption.item():.3f}, object patches to their word(s) {cos.mean().item():.3f}, "
                  f"background to <image> {cosines[~named].mean().item():.3f}"
                  + (f", mean token to the class set {set_cos.mean().item():.3f}" if presence > 0 else ""), flush=True)
    for p in lm:
        p.requires_grad_(True)


if __name__ == "__main__":
    main()
