"""The per-image sequence every model-running analysis shares: prepare → baseline → run → target.

Contract (each step a public function, used by attribution, validation, flow and the default model's
phenomena, here and on Ray workers alike):

1. :meth:`InterventionEngine.prepare` runs the clean prompt once (prefix cache, clean logits, image keys
   and values) — :func:`checked_prompt` does it on a worker and checks the clean logit against the run's
   record, so a worker with another model fails loudly instead of computing wrong rows;
2. :func:`image_baseline` gives the baseline keys/values the ablated heads see at image positions (a run's
   shared mean/blank baseline, zeros, a knockout, or another image's keys/values for ``resample``);
3. :meth:`InterventionEngine.run` evaluates every intervention row of the image in batches;
4. :func:`target_values` (``headflow.answers``) reads the scalar target per row; with the ``sequence`` target
   the answer's tokens are teacher-forced in the same pass.

Whether the clean model answers an image correctly is decided on the whole word (:func:`answer_correct`),
never by a first token alone.

Where state lives: nothing here keeps state; an :class:`ImageJob` carries what one image needs and a
:class:`~headflow.intervene.Baseline` the baseline; the caller owns the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .answers import Answer, Answers, target_values
from .errors import HeadflowError
from .intervene import Baseline, Intervention, InterventionEngine, PreparedPrompt, RunOutput
from .intervene.attention import LayerBaseline
from .models.loading import LoadedModel, load_model

@dataclass(frozen=True)
class ImageJob:
    """What one image's rows need: the image, its resample partner (or None) and its recorded answer (the
    target spelling's tokens; the first is the target token)."""

    image: Image.Image
    partner: Image.Image | None
    answer_ids: tuple[int, ...]
    clean_logit: float

    @property
    def answer_id(self) -> int:
        return self.answer_ids[0]


def resample_partner(table: pd.DataFrame, idx: int) -> int:
    """The next image (cyclically) of a different class: the deterministic ``resample`` baseline source."""
    labels = table["label"].tolist()
    n = len(labels)
    for step in range(1, n):
        other = (idx + step) % n
        if labels[other] != labels[idx]:
            return other
    raise HeadflowError("The 'resample' baseline needs images of at least two classes.")


def image_job(dataset, table: pd.DataFrame, idx: int, baseline: str) -> ImageJob:
    """The :class:`ImageJob` of image ``idx`` of ``dataset``, from the run's image table (after checking that
    the dataset's image is the one the run recorded)."""
    ex = dataset[idx]
    if ex.id != table.at[idx, "id"]:
        raise HeadflowError(f"Image {idx} of the dataset is {ex.id!r} but the run recorded {table.at[idx, 'id']!r}; "
                            "pass the run's own data.")
    partner = dataset[resample_partner(table, idx)].image if baseline == "resample" else None
    return ImageJob(ex.image, partner, recorded_answer_ids(table, idx), float(table.at[idx, "clean_logit"]))


def recorded_answer_ids(table: pd.DataFrame, idx: int) -> tuple[int, ...]:
    """The answer's tokens recorded in a run's image table (``answer_ids``; runs of headflow < 0.2 recorded
    the first token only, ``answer_id``)."""
    if "answer_ids" in table.columns:
        return tuple(int(t) for t in table.at[idx, "answer_ids"])
    return (int(table.at[idx, "answer_id"]),)


def image_baseline(engine: InterventionEngine, prompt: PreparedPrompt, shared: Baseline | None, kind: str,
                   question: str, partner: Image.Image | None) -> Baseline:
    """The baseline of one prompt: the run's ``shared`` one (mean, blank), or one made for this image."""
    if kind in ("mean", "blank"):
        return shared
    if kind == "knockout":
        return Baseline.knockout()
    if kind == "zero":
        return Baseline.zero(prompt)
    return Baseline.of_prompt(engine.prepare(partner, question), kind="resample")


def image_targets(engine: InterventionEngine, prompt: PreparedPrompt, rows: list[Intervention],
                  baseline: Baseline | None, answer_ids: tuple[int, ...], target: str,
                  check_answer: bool = False) -> tuple[torch.Tensor, RunOutput]:
    """Run ``rows`` on ``prompt``; returns (targets ``[row]`` float32, the run's output).

    The ``sequence`` target teacher-forces the answer's tokens after the prompt in the same pass; with
    ``check_answer`` all of them are (so :func:`rows_correct` can read each row's whole answer).
    """
    continuation = answer_ids if check_answer else answer_ids[:-1] if target == "sequence" else ()
    out = engine.run(prompt, rows, baseline=baseline, continuation=continuation)
    return target_values(out.logits, answer_ids[0], target, out.continuation_logits, answer_ids), out


def clean_target(engine: InterventionEngine, prompt: PreparedPrompt, answer_ids: tuple[int, ...], target: str) -> float:
    """The target of the clean prompt (for ``sequence``, one teacher-forced pass over the answer's tokens)."""
    if target != "sequence" or len(answer_ids) == 1:
        return float(target_values(prompt.clean_logits[None], answer_ids[0], target, None, answer_ids)[0])
    return float(image_targets(engine, prompt, [Intervention()], None, answer_ids, target)[0][0])


def engine_memory(lm: LoadedModel, n_tokens: int, batch_size: int | str, n_rows: int,
                  suffix_tokens: int | None = None) -> int:
    """Bytes of host memory the intervention engine needs for one image of ``n_tokens`` tokens and ``n_rows`` rows.

    From the model's shape: the clean prompt's keys and values (``2 x layers x KV heads x tokens x head_dim``) and
    embeddings, one forward pass of ``batch_size`` rows and the float32 logits of every row with a working copy.
    Per row, on the full path (``suffix_tokens=None``): float32 attention scores and their softmax
    (``2 x heads x tokens^2``), the residual stream, MLP and one layer's keys and values. On the prefix path (the
    ``suffix_tokens`` after the image run per row): one layer's working set for those tokens — residual stream and
    norms, queries/keys/values, the attention blocks' outputs and their merge, the MLP — plus the suffix block's
    scores and the row's output logits (measured within 25 % on the ``llava15`` shape: BENCHMARKS.md).
    ``batch_size="auto"`` counts the largest size a CPU calibrates (128). Zero for a model on an accelerator: its
    engine state is in the accelerator's memory, where ``"auto"`` backs off on its own.
    """
    if lm.device.type != "cpu":
        return 0
    cfg = lm.text_config
    item = lm.dtype.itemsize
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // max(lm.n_heads, 1))
    mlp = int(getattr(cfg, "intermediate_size", None) or 4 * hidden)
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    kv = 2 * lm.n_kv_heads * n_tokens * head_dim * item
    batch = min(n_rows, 128 if batch_size == "auto" else int(batch_size))
    if suffix_tokens is None:
        per_row = 2 * lm.n_heads * n_tokens * n_tokens * 4 + n_tokens * (4 * hidden + 2 * mlp) * item + kv
    else:
        s = suffix_tokens
        width = 8 * hidden + 3 * mlp + (6 * lm.n_heads + 2 * lm.n_kv_heads) * head_dim
        per_row = s * width * item + s * s * lm.n_heads * 4 + 2 * vocab * 4
    return lm.n_layers * kv + n_tokens * hidden * item + batch * per_row + 2 * n_rows * vocab * 4


def check_labels(answers: Answers, labels) -> dict[str, list]:
    """What a run should know about its labels before it starts, each reported as a one-line
    :class:`~headflow.errors.HeadflowWarning` and returned for its record:

    - ``answer_collisions``: pairs of labels whose answers start with the same token (:meth:`Answers.collisions`);
    - ``unanswerable_labels``: labels the model cannot write as a token after the prompt (unknown to a word-level
      vocabulary, whitespace); their images are skipped, not fatal.
    """
    import warnings

    from .errors import HeadflowWarning

    labels = sorted(set(labels))
    pairs = answers.collisions(labels)
    for pair in pairs:
        a, b = pair["labels"]
        warnings.warn(f"The labels {a!r} and {b!r} can both start with the token {pair['token']!r} after this prompt: "
                      "their first-token targets are the same logit (correctness is still checked on whole words); "
                      "--target sequence reads the whole answer.", HeadflowWarning, stacklevel=2)
    unanswerable = [label for label in labels if not answers.spellings(label)]
    if unanswerable:
        warnings.warn(f"The model cannot write the label(s) {', '.join(map(repr, unanswerable))} as tokens after this "
                      "prompt (unknown to its vocabulary); their images are skipped. Relabel them with words the "
                      "tokenizer knows.", HeadflowWarning, stacklevel=2)
    return {"answer_collisions": pairs, "unanswerable_labels": unanswerable}


def dataset_labels(data) -> list[str]:
    """The labels of a dataset (its ``classes`` where it has them, else each example's)."""
    classes = getattr(data, "classes", None)
    return list(classes) if classes else [ex.label for ex in data]


def answer_correct(engine: InterventionEngine, prompt: PreparedPrompt, answer: Answer, answers: Answers) -> bool:
    """Does the clean model answer with the label? Its greedy answer, teacher-forced over each accepted spelling
    that starts with the model's top token, must be that whole spelling and end there (``hot`` is not
    ``hotdog``): one extra pass per such spelling, on the prefix cache."""
    greedy = int(prompt.clean_logits.argmax())
    for spelling in answer.accepted:
        if spelling.ids[0] != greedy:
            continue
        steps = engine.run(prompt, [Intervention()], continuation=spelling.ids).continuation_logits[0].argmax(-1)
        if steps[:-1].tolist() == list(spelling.ids[1:]) and not answers.continues_word(spelling.ids, int(steps[-1])):
            return True
    return False


def rows_correct(out: RunOutput, answer_ids: tuple[int, ...], answers: Answers) -> np.ndarray:
    """Per row of a run made with ``continuation=answer_ids``: is its greedy answer the whole target spelling?"""
    first = out.logits.argmax(-1).cpu().numpy() == answer_ids[0]
    steps = out.continuation_logits.argmax(-1).cpu().numpy()  # [row, token]
    rest = (steps[:, :-1] == np.asarray(answer_ids[1:], dtype=steps.dtype)[None]).all(-1)
    glue = {int(t): answers.continues_word(answer_ids, int(t)) for t in np.unique(steps[:, -1])}
    ends = np.array([not glue[int(t)] for t in steps[:, -1]], dtype=bool)
    return first & rest & ends


def mask_rows(masks: np.ndarray, n_layers: int, n_heads: int) -> list[Intervention]:
    """Ablation rows from boolean masks ``[row, n_layers * n_heads]``."""
    tensor = torch.from_numpy(np.ascontiguousarray(masks)).view(-1, n_layers, n_heads)
    return [Intervention(ablate=m) for m in tensor]


def data_record(dataset) -> dict[str, Any]:
    """How a run records its data: ``load_dataset``'s arguments where known (so the data can be reloaded)."""
    args = getattr(dataset, "load_args", None)
    if args:
        return dict(args)
    return {"spec": getattr(dataset, "name", None) or "custom", "n": len(dataset), "seed": None}


# -- the run's shared baseline ----------------------------------------------------------------------

def accumulate_kv(total: list[LayerBaseline] | None, kv: list[LayerBaseline], n: int) -> list[LayerBaseline]:
    """Running mean of image keys/values (per-head mean over positions when counts differ)."""
    if total is not None and total[0].keys.shape[1] != kv[0].keys.shape[1]:
        kv = [LayerBaseline(b.keys.mean(1, keepdim=True), b.values.mean(1, keepdim=True)) for b in kv]
        total = [LayerBaseline(t.keys.mean(1, keepdim=True), t.values.mean(1, keepdim=True)) for t in total]
    if total is None:
        return [LayerBaseline(b.keys.float() / n, b.values.float() / n) for b in kv]
    return [LayerBaseline(t.keys + b.keys.float() / n, t.values + b.values.float() / n) for t, b in zip(total, kv)]


def baseline_to(baseline: Baseline | None, device) -> Baseline | None:
    """The baseline with its tensors on ``device``."""
    if baseline is None or baseline.layers is None:
        return baseline
    return Baseline(baseline.kind, [LayerBaseline(b.keys.to(device), b.values.to(device)) for b in baseline.layers])


def save_baseline(path: Path, baseline: Baseline) -> None:
    """Write a baseline's keys/values as safetensors (atomically)."""
    from safetensors.torch import save_file

    from .store import save_recorded

    tensors = {}
    for i, layer in enumerate(baseline.layers):
        tensors[f"keys.{i}"] = layer.keys.contiguous().cpu()
        tensors[f"values.{i}"] = layer.values.contiguous().cpu()
    save_recorded(path, lambda tmp: save_file(tensors, str(tmp), metadata={"kind": baseline.kind}))


def load_baseline(path: Path, *, rebuild_hint: str | None = None) -> Baseline | None:
    """Read a baseline written by :func:`save_baseline` (None when the run has none), after checking its
    integrity record (a recorded baseline that is missing or changed is an error, never "no baseline")."""
    from .store import verify_file

    verify_file(path, rebuild_hint=rebuild_hint)
    if not path.exists():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        kind = f.metadata().get("kind", "mean")
    tensors = load_file(str(path))
    n = len([k for k in tensors if k.startswith("keys.")])
    return Baseline(kind, [LayerBaseline(tensors[f"keys.{i}"], tensors[f"values.{i}"]) for i in range(n)])


# -- [ray] workers --------------------------------------------------------------------------------

def worker_spec(model: Any) -> tuple[str, str | None]:
    """The spec (and dtype) a Ray worker loads the model from; a model built in Python cannot be shipped."""
    if isinstance(model, (str, Path)):
        return str(model), None
    name = getattr(model, "name", None) if isinstance(model, LoadedModel) else None
    if name and (name == "default" or name.startswith("tiny:") or Path(name).is_dir()
                 or (name.count("/") == 1 and not name.startswith(("/", ".")))):
        return name, str(model.dtype).replace("torch.", "")
    got = f"a LoadedModel named {name!r}" if name else f"a {type(model).__name__}"
    raise HeadflowError(
        f"With a Ray runner each worker loads the model from its spec, but the model is {got}, which cannot be "
        "shipped to workers. Pass a spec instead: 'default', 'tiny:<family>', a local directory or a hub id.")


def worker_engine(spec: str, dtype: str | None, device: str, batch_size: int | str) -> InterventionEngine:
    """A worker's engine: the model loaded from its spec on the worker's device; a worker given several GPUs
    (``gpus_per_worker`` > 1) splits its replica over them (``device_map="auto"`` over the GPUs Ray shows it)."""
    if device == "cuda" and torch.cuda.device_count() > 1:
        return InterventionEngine(load_model(spec, dtype=dtype, device_map="auto"), batch_size=batch_size)
    return InterventionEngine(load_model(spec, device=device, dtype=dtype), batch_size=batch_size)


def checked_prompt(engine: InterventionEngine, spec: str, question: str, job: ImageJob) -> PreparedPrompt:
    """Prepare an image and check its clean logit against the run's record: is this the run's model?

    (Run on every Ray worker, and by analyses that reopen a run, such as validation.)
    """
    prompt = engine.prepare(job.image, question)
    vocab = prompt.clean_logits.shape[-1]
    got = float(prompt.clean_logits[job.answer_id]) if job.answer_id < vocab else float("nan")
    if not np.isclose(got, job.clean_logit, rtol=1e-2, atol=1e-2):
        raise HeadflowError(
            f"The model {spec!r} gives a clean logit of {got:.4f} where this run recorded {job.clean_logit:.4f}; "
            "it is not the run's model (a worker or --model loaded another one). Pass the run's model spec.")
    return prompt
