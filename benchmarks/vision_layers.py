"""Does an earlier layer of the vision tower give patch tokens that say what is in their patch and carry less of
the rest of the scene? (issue 16)

For every hidden state of the tower (0: the patch embeddings; the last: what the projector reads with
``vision_feature_layer -1``) of a state written by ``python -m headflow.zoo.train --cache FILE`` (``FILE`` and its
``.data.npz``), on the first 2,000 training scenes:

- *main class from the background*: the main object's class read from the mean of the patches no object covers
  (logistic regression, 3-fold; chance 1/16): how much of the scene the background carries;
- *patch class*: the class of the object covering a patch, or none, read from that patch's token (logistic
  regression fit on half the patches of the first 1,500 scenes, scored on the other 500): on any object's
  patches, on a distractor's, and how often a background patch is called an object.

    python benchmarks/vision_layers.py --cache runs/w192.align.pt --size text_hidden=192,text_mlp=576
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from headflow.data.default import CLASSES
from headflow.zoo import train as T
from headflow.zoo.build import build_config, build_processor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True, help="state after alignment (train --cache FILE)")
    ap.add_argument("--size", default="", metavar="FIELD=N,...", help="the --size the cache was written with (train --size)")
    ap.add_argument("--scenes", type=int, default=2000)
    args = ap.parse_args()
    from transformers import LlavaForConditionalGeneration

    torch.set_num_threads(2)
    cfg = T.TrainConfig()
    if args.size:
        cfg = dataclasses.replace(cfg, size=T._parse_size(ap, args.size, cfg.size))
    proc = build_processor(cfg.size, world=2)
    model = LlavaForConditionalGeneration(build_config(proc.tokenizer, cfg.size))
    model.load_state_dict(torch.load(args.cache, weights_only=False)["state"])
    model.eval()
    pix, n = T.Pixels(proc), args.scenes
    with np.load(args.cache.removesuffix(".pt") + ".data.npz") as z:
        images, attrs, patches = z["images"][:n], z["attrs"][:n], z["patches"][:n]
    with torch.no_grad():
        states = [model.model.vision_tower(pix(images[i:i + 200]), output_hidden_states=True).hidden_states
                  for i in range(0, n, 200)]
    main_class, background = attrs[:, 0], patches == len(CLASSES)
    n_fit = n * 3 // 4
    for layer in range(len(states[0])):
        tokens = torch.cat([s[layer][:, 1:] for s in states]).numpy()  # CLS dropped, as the projector reads them
        mean_bg = np.stack([t[b].mean(0) if b.any() else np.zeros(t.shape[-1]) for t, b in zip(tokens, background)])
        from_bg = cross_val_score(LogisticRegression(max_iter=3000), mean_bg, main_class, cv=3).mean()
        x, y = tokens.reshape(-1, tokens.shape[-1]), patches.reshape(-1)
        fit = np.arange(len(y)) < n_fit * patches.shape[1]
        half = np.random.default_rng(0).random(len(y)) < 0.5
        pred = LogisticRegression(max_iter=3000).fit(x[fit & half], y[fit & half]).predict(x[~fit])
        truth = y[~fit]
        on_object = truth < len(CLASSES)
        on_distractor = on_object & (truth != np.repeat(main_class[n_fit:], patches.shape[1]))
        print(f"layer {layer}: main class from the background {from_bg:.3f} | patch class on objects "
              f"{(pred[on_object] == truth[on_object]).mean():.3f}, on distractors "
              f"{(pred[on_distractor] == truth[on_distractor]).mean():.3f}, background called an object "
              f"{(pred[~on_object] != len(CLASSES)).mean():.3f}", flush=True)


if __name__ == "__main__":
    main()
