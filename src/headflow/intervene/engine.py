"""The intervention engine: prepare a prompt once (clean run, prefix cache), then run many rows.

Both paths re-run the language model alone on what it received on the clean run (:mod:`.replay`: its inputs and
each layer's own mask), then the model's output head; the prefix path is taken where those masks make it exact.

Where state lives: a :class:`PreparedPrompt` holds one image's clean logits, its recorded keys and
values (per layer, post-RoPE, ``[1, kv_head, position, head_dim]``) and the language model's recorded inputs and
masks. It lives as long as the caller keeps it. The model itself is only changed inside
:func:`~headflow.intervene.attention.attention_scope` for the duration of one call.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import torch
from PIL import Image

from ..errors import HeadflowError
from ..method import DEFAULT_BATCH_SIZE
from ..models.groups import TokenGroups
from ..models.loading import LoadedModel
from .attention import STATE_KWARG, ForwardState, LayerBaseline, attention_scope
from .replay import RecordedInputs, prefix_violation, recording, recorded_inputs, replay_kwargs, replay_masks
from .spec import CompiledBatch, Intervention, compile_rows

PathChoice = Literal["auto", "prefix", "full"]


@dataclass
class PreparedPrompt:
    """One image + question, run once cleanly.

    Attributes
    ----------
    groups : TokenGroups
    inputs : dict
        The processor's outputs.
    clean_logits : Float[Tensor, "vocab"]
        Final-position logits of the clean run.
    keys, values : list of Float[Tensor, "1 kv_head position head_dim"]
        Recorded per layer over the whole prompt.
    recorded : RecordedInputs
        Everything the language model received on the clean run (embeddings, position ids, any other input of
        the family, each layer's attention mask): what both paths replay.
    image_attention : Float[Tensor, "layer head"]
        Mass of the final token's query on image positions in the clean run.
    final_hidden : Float[Tensor, "hidden"]
        The language model's last hidden state at the final position (clean run).
    """

    groups: TokenGroups
    inputs: dict[str, torch.Tensor]
    clean_logits: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    recorded: RecordedInputs
    image_attention: torch.Tensor
    final_hidden: torch.Tensor

    @property
    def embeds(self) -> torch.Tensor:
        """The language model's input embeddings ``[1, position, hidden]``."""
        return self.recorded.kwargs["inputs_embeds"]

    @property
    def position_ids(self) -> torch.Tensor | None:
        """The language model's position ids (``[1, n]`` or multi-axis ``[axis, 1, n]``), if it received any."""
        return self.recorded.kwargs.get("position_ids")

    @property
    def prefix_length(self) -> int:
        """Where the prefix path splits the prompt: the shared prefix (system + image) is positions
        ``< prefix_length``; the first position whose query an ablation touches."""
        return self.groups.text_start

    @property
    def n_image_tokens(self) -> int:
        return len(self.groups.image)

    def image_kv(self) -> list[LayerBaseline]:
        """This prompt's own keys/values at its image positions (the identity baseline)."""
        image = torch.tensor(self.groups.image)
        return [LayerBaseline(k[0][:, image], v[0][:, image]) for k, v in zip(self.keys, self.values)]


@dataclass
class Baseline:
    """Replacement keys/values for ablated heads at image positions.

    ``kind`` is one of ``mean``, ``zero``, ``blank``, ``resample``, ``knockout`` or ``custom``;
    ``layers`` holds per-layer ``[kv_head, image_token, head_dim]`` tensors (None for knockout).
    A baseline whose token count differs from a prompt's (any-resolution models) is used as the
    per-head mean over positions.
    """

    kind: str
    layers: list[LayerBaseline] | None

    def for_prompt(self, prompt: PreparedPrompt) -> list[LayerBaseline] | None:
        if self.layers is None:
            return None
        n = prompt.n_image_tokens
        if self.layers[0].keys.shape[1] == n:
            return self.layers
        return [LayerBaseline(b.keys.mean(1, keepdim=True).expand(-1, n, -1),
                              b.values.mean(1, keepdim=True).expand(-1, n, -1)) for b in self.layers]

    @classmethod
    def knockout(cls) -> "Baseline":
        return cls("knockout", None)

    @classmethod
    def zero(cls, prompt: PreparedPrompt) -> "Baseline":
        own = prompt.image_kv()
        return cls("zero", [LayerBaseline(torch.zeros_like(b.keys), torch.zeros_like(b.values)) for b in own])

    @classmethod
    def of_prompt(cls, prompt: PreparedPrompt, kind: str = "custom") -> "Baseline":
        """Keys/values of another prepared prompt (``blank``, ``resample``) or of itself (identity)."""
        return cls(kind, prompt.image_kv())

    @classmethod
    def mean(cls, prompts: Sequence[PreparedPrompt]) -> "Baseline":
        """Mean over prompts, per layer, KV head and image position (per-head mean if counts vary)."""
        if not prompts:
            raise HeadflowError("A mean baseline needs at least one prepared prompt.")
        per_prompt = [p.image_kv() for p in prompts]
        counts = {p.n_image_tokens for p in prompts}
        layers = []
        for layer in range(len(per_prompt[0])):
            ks = [pp[layer].keys for pp in per_prompt]
            vs = [pp[layer].values for pp in per_prompt]
            if len(counts) > 1:
                ks = [k.mean(1, keepdim=True) for k in ks]
                vs = [v.mean(1, keepdim=True) for v in vs]
            layers.append(LayerBaseline(torch.stack(ks).mean(0), torch.stack(vs).mean(0)))
        return cls("mean", layers)


@dataclass
class RunOutput:
    """Final-position logits ``[row, vocab]``, if captured image attention ``[row, layer, head]``, and with a
    ``continuation`` the logits at each appended token ``[row, token, vocab]`` (each predicts the next one). ``path``
    is the path run (``"prefix"`` or ``"full"``) and ``reason`` why the full path was run (``None`` on the prefix
    path)."""

    logits: torch.Tensor
    image_attention: torch.Tensor | None
    path: str
    continuation_logits: torch.Tensor | None = None
    #: why the full path was taken (``None`` on the prefix path)
    reason: str | None = None


class InterventionEngine:
    """Run batches of head ablations and attention knockouts inside the model's own attention.

    Parameters
    ----------
    model : LoadedModel
    batch_size : int or "auto"
        Rows per forward pass. ``"auto"``: on a GPU, start large and halve on out-of-memory (the
        failed chunk is retried, nothing is lost); on CPU, time the first chunks at a few sizes
        (their results are kept) and use the fastest from then on.
    kernel : "auto" or "written"
        How the prefix path computes its attention blocks: ``"auto"``, each block's fused kernel
        (:func:`~headflow.intervene.attention.block_kernel`: SDPA's flash kernel on CPU, FlashAttention-2 or the
        memory-efficient kernel on CUDA); ``"written"``, the reference written out with matmuls and float32 scores
        (what the GPU benchmark checks the fused kernels against).

    Examples
    --------
    >>> from headflow import load_model
    >>> from headflow.intervene import InterventionEngine, Intervention, Baseline
    >>> lm = load_model("tiny:llava")
    >>> engine = InterventionEngine(lm)
    >>> prompt = engine.prepare(Image.new("RGB", (32, 32), "red"), "What is the main object in the image?")
    >>> out = engine.run(prompt, [Intervention()], baseline=Baseline.knockout())
    >>> bool(torch.allclose(out.logits[0], prompt.clean_logits, atol=1e-4))
    True
    """

    def __init__(self, model: LoadedModel, *, batch_size: int | str = DEFAULT_BATCH_SIZE, kernel: str = "auto") -> None:
        if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
            raise HeadflowError(f"The 'batch_size' parameter of InterventionEngine must be an int in [1, inf) or "
                                f"'auto'. Got {batch_size!r} instead.")
        if kernel not in ("auto", "written"):
            raise HeadflowError(f"The 'kernel' parameter of InterventionEngine must be one of auto, written. Got "
                                f"{kernel!r} instead.")
        self.lm = model
        self.kernel = kernel
        self.batch_size = batch_size
        self.auto = batch_size == "auto"
        self._calibrate = self.auto and model.device.type == "cpu"
        if self.auto:
            self.batch_size = DEFAULT_BATCH_SIZE if model.device.type == "cpu" else 512
        self._timings: dict[int, float] = {}

    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        with attention_scope(self.lm.model, self.lm.adapter.text_config_key), torch.no_grad():
            yield

    @contextlib.contextmanager
    def _grad_scope(self) -> Iterator[None]:
        with attention_scope(self.lm.model, self.lm.adapter.text_config_key), torch.enable_grad():
            yield

    # -- clean run -------------------------------------------------------------------------
    def prepare(self, image: Image.Image | Sequence[Image.Image], question: str) -> PreparedPrompt:
        """Encode, run the clean prompt once, and record keys/values and everything the language model receives
        (:mod:`.replay`)."""
        inputs, groups = self.lm.encode(image, question)
        state = ForwardState(mode="full", prefix_length=0, length=groups.length,
                             image_positions=torch.tensor(groups.image), text_start=groups.text_start,
                             record={}, capture_attention=True, mask_record={})
        with recording(self.lm.adapter.language_model()) as captured, self._scope():
            out = self.lm.model(**inputs, use_cache=False, output_hidden_states=True, **{STATE_KWARG: state})
        n_layers = self.lm.n_layers
        if len(state.record) != n_layers:
            raise HeadflowError(f"headflow's attention saw {len(state.record)} of {n_layers} language-model layers; "
                                "the model does not dispatch attention through AttentionInterface.")
        recorded = recorded_inputs(captured, state.mask_record, n_layers, type(self.lm.model).__name__)
        attention = torch.stack([state.image_attention[layer][0].to(out.logits.device) for layer in range(n_layers)])
        return PreparedPrompt(
            groups=groups, inputs=inputs, clean_logits=out.logits[0, -1].float(),
            keys=[state.record[layer][0] for layer in range(n_layers)],
            values=[state.record[layer][1] for layer in range(n_layers)],
            recorded=recorded, image_attention=attention.float(),
            final_hidden=out.hidden_states[-1][0, -1].float())

    # -- interventions ---------------------------------------------------------------------
    def compile(self, prompt: PreparedPrompt, rows: Sequence[Intervention]) -> CompiledBatch:
        return compile_rows(rows, prompt.groups, self.lm.n_layers, self.lm.n_heads)

    def run(
        self,
        prompt: PreparedPrompt,
        rows: Sequence[Intervention],
        *,
        baseline: Baseline | None = None,
        path: PathChoice = "auto",
        capture_attention: bool = False,
        continuation: Sequence[int] = (),
    ) -> RunOutput:
        """Final-position logits for each row.

        ``path="auto"`` reuses the prefix cache (system + image, computed once in :meth:`prepare`)
        when :meth:`prefix_path_reason` finds nothing against it, and falls back to the full prompt
        otherwise. ``"prefix"`` and ``"full"`` force one path (``"prefix"`` raises, with that reason,
        if it cannot apply).

        ``continuation`` token ids are appended after the prompt, teacher-forced, in the same pass: their
        logits come back as ``continuation_logits`` (used to read a whole answer word, or to check that the
        model's greedy answer is the label). Their queries are text queries (ablated heads see the baseline
        there too); no knockout names them.
        """
        if path not in ("auto", "prefix", "full"):
            raise HeadflowError(f"The 'path' parameter of run must be one of auto, prefix, full. Got {path!r} instead.")
        continuation = [int(t) for t in continuation]
        if continuation and capture_attention:
            raise HeadflowError("capture_attention reads the final position; run it without a continuation.")
        compiled = self.compile(prompt, rows).extended(len(continuation))
        if compiled.ablate is not None and baseline is None:
            raise HeadflowError("Rows ablate heads but no baseline was given; pass baseline=Baseline.mean(prompts) "
                                "or Baseline.knockout().")
        reason = self._why_not_prefix(prompt, compiled, len(continuation))
        if path == "prefix" and reason is not None:
            raise HeadflowError(f"The prefix path cannot serve this batch: {reason}. Use path='auto' or 'full'.")
        use_prefix = path != "full" and reason is None
        logits, attention, appended = [], [], []
        forward = self._run_prefix if use_prefix else self._run_full
        extra = self._continuation_inputs(prompt, continuation)
        start = 0
        while start < len(rows):
            size = self._next_size()
            chunk = _slice_batch(compiled, start, start + size)
            began = time.perf_counter()
            try:
                out, att = forward(prompt, chunk, baseline, capture_attention, extra)
            except torch.OutOfMemoryError:
                if not self.auto or size == 1:
                    raise
                self.batch_size = max(1, size // 2)  # back off and retry this chunk
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            if self._calibrate and chunk.size == size:
                self._timings[size] = (time.perf_counter() - began) / size
            logits.append(out[:, 0])
            appended.append(out[:, 1:])
            attention.append(att)
            start += chunk.size
        why = None if use_prefix else (reason or "path='full' was asked for")
        return RunOutput(torch.cat(logits), torch.cat(attention) if capture_attention else None,
                         "prefix" if use_prefix else "full", torch.cat(appended) if continuation else None, why)

    _CALIBRATION_SIZES = (16, 32, 64, 128)

    def _next_size(self) -> int:
        """The batch size of the next chunk (auto on CPU: try each calibration size once, then the fastest)."""
        if not self._calibrate:
            return self.batch_size
        untried = [s for s in self._CALIBRATION_SIZES if s not in self._timings]
        if untried:
            return untried[0]
        self._calibrate = False
        self.batch_size = min(self._timings, key=self._timings.get)
        return self.batch_size

    def prefix_path_reason(self, prompt: PreparedPrompt, rows: Sequence[Intervention] | None = None) -> str | None:
        """Why the prefix path cannot serve ``prompt`` (and ``rows``, if given); ``None`` when it can.

        Read from the model's own attention masks, recorded per layer on the clean run (:mod:`.replay`): the
        prefix path reuses the shared prefix's (system + image) keys and values from the clean run, so it is valid
        exactly when no prefix query attends a position after the prefix (not so in a prefix-LM such as PaliGemma,
        whose image and prompt attend each other). Which prefix positions each later query may attend is taken
        from the same masks and applied inside the prefix blocks (a sliding window shorter than the prompt hides
        the oldest). With ``rows``, also not when a row intervenes on a query at or before the image (the prefix
        is computed once, without interventions).
        ``run(path="auto")`` takes the full path exactly when this returns a reason; ``run(path="prefix")``
        raises with it.
        """
        compiled = self.compile(prompt, rows) if rows is not None else None
        return self._why_not_prefix(prompt, compiled)

    def _why_not_prefix(self, prompt: PreparedPrompt, compiled: CompiledBatch | None, appended: int = 0) -> str | None:
        """:meth:`prefix_path_reason`, for a prompt run with ``appended`` continuation tokens."""
        reason = prefix_violation(prompt.recorded, prompt.prefix_length, appended)
        if reason is not None:
            return reason
        if compiled is not None and compiled.first_query < prompt.prefix_length:
            return (f"a row intervenes on the query at position {compiled.first_query}, at or before the image "
                    f"(the shared prefix ends at position {prompt.prefix_length})")
        return None

    def _continuation_inputs(self, prompt: PreparedPrompt, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Embeddings ``[1, n, hidden]`` and position ids ``[n]`` of ``n`` tokens appended after the prompt (text
        positions continue from the prompt's last, on every rotary axis), or None."""
        if not ids:
            return None
        embed = self.lm.model.get_input_embeddings()
        tokens = torch.tensor([ids], device=prompt.embeds.device)
        with torch.no_grad():
            embeds = embed(tokens).to(prompt.embeds.dtype)
        steps = torch.arange(1, len(ids) + 1, device=prompt.embeds.device)
        if prompt.position_ids is None:
            positions = steps + (prompt.groups.length - 1)
        else:
            positions = prompt.position_ids[..., -1:] + steps
        return embeds, positions

    def _state(self, prompt: PreparedPrompt, chunk: CompiledBatch, baseline: Baseline | None, mode: str,
               capture: bool) -> ForwardState:
        device = self.lm.device
        layers = baseline.for_prompt(prompt) if baseline is not None else None
        if layers is not None:  # each layer's baseline on the device of that layer (where its keys were recorded)
            layers = [LayerBaseline(b.keys.to(k.device), b.values.to(k.device)) for b, k in zip(layers, prompt.keys)]
        state = ForwardState(
            mode=mode, prefix_length=prompt.prefix_length if mode == "prefix" else 0, length=prompt.groups.length,
            image_positions=torch.tensor(prompt.groups.image, device=device), text_start=prompt.groups.text_start,
            batch=chunk.to(device), baseline_kind=baseline.kind if baseline is not None else "none",
            baseline=layers, capture_attention=capture, kernel=self.kernel)
        if mode == "prefix":
            prefix_length = prompt.prefix_length
            state.prefix = [(k[:, :, :prefix_length], v[:, :, :prefix_length]) for k, v in zip(prompt.keys, prompt.values)]
        return state

    def _run_full(self, prompt, chunk, baseline, capture, extra):
        return self._run_from(0, prompt, chunk, baseline, capture, extra)

    def _run_prefix(self, prompt, chunk, baseline, capture, extra):
        return self._run_from(prompt.prefix_length, prompt, chunk, baseline, capture, extra)

    def mixed(self, prompt: PreparedPrompt, mix: torch.Tensor, *, baseline: Baseline, kind: str = "output",
              continuation: Sequence[int] = ()) -> torch.Tensor:
        """Logits ``[row, 1 + len(continuation), vocab]`` (in the model's dtype) with a continuous coefficient per (row, layer, head)
        between each head's clean (0) and ablated (1) reading of the image, differentiable in ``mix``.

        ``mix``: float ``[row, layer, head]`` (set ``requires_grad`` to take gradients: attribution patching).
        ``kind="output"`` mixes each head's output at text queries, ``(1 − α)·clean + α·ablated``;
        ``kind="kv"`` mixes the keys and values its text queries read at the image positions,
        ``(1 − α)·real + α·baseline`` (not defined for the knockout baseline). At α = 0 both equal the clean
        logits and at α = 1 on a set of heads the ablation of those heads (:meth:`run`). Always the full path,
        one forward pass over all rows (gradients flow through the model; none is kept on its weights).
        """
        if kind not in ("output", "kv"):
            raise HeadflowError(f"The 'kind' parameter of mixed must be one of output, kv. Got {kind!r} instead.")
        if baseline is None:
            raise HeadflowError("mixed() needs a baseline: the ablated reading of the image (α = 1).")
        if kind == "kv" and baseline.layers is None:
            raise HeadflowError("Mixing keys and values (kind='kv') needs baseline keys/values; the knockout "
                                "baseline has none. Use kind='output'.")
        shape = (self.lm.n_layers, self.lm.n_heads)
        if mix.ndim != 3 or tuple(mix.shape[1:]) != shape:
            raise HeadflowError(f"A mixing coefficient must have shape (rows, n_layers, n_heads) = (rows, {shape[0]}, "
                                f"{shape[1]}). Got {tuple(mix.shape)} instead.")
        continuation = [int(t) for t in continuation]
        chunk = self.compile(prompt, [Intervention()] * mix.shape[0]).extended(len(continuation))
        extra = self._continuation_inputs(prompt, continuation)
        logits, _ = self._run_from(0, prompt, chunk, baseline, False, extra, mix=(mix.to(self.lm.device), kind))
        return logits

    def _run_from(self, start: int, prompt, chunk, baseline, capture, extra, mix=None):
        """Run the language model on positions ``start..`` of the prompt (``start`` 0: the full path), then any
        appended tokens, replaying what it received on the clean run (inputs and each layer's mask); logits
        ``[row, 1 + appended, vocab]`` of the final position and the appended ones, from the model's output head.
        With ``mix`` (``(coefficients, kind)``, full path) gradients are on (see :meth:`mixed`)."""
        state = self._state(prompt, chunk, baseline, "prefix" if start else "full", capture)
        if mix is not None:
            state.mix, state.mix_kind = mix
        n_appended = 0 if extra is None else extra[0].shape[1]
        kwargs = replay_kwargs(prompt.recorded, start, chunk.size, extra)
        state.masks, hidden = replay_masks(prompt.recorded, start, n_appended, self.lm.device)
        if start:
            state.prefix_hidden = hidden
        scope = self._scope() if mix is None else self._grad_scope()
        with scope:
            out = self.lm.adapter.language_model()(**kwargs, use_cache=False, **{STATE_KWARG: state})
            logits = self.lm.adapter.output_logits(out.last_hidden_state[:, -(1 + n_appended):])
        attention = None
        if state.capture_attention:
            attention = torch.stack([state.image_attention[layer].to(logits.device) for layer in range(self.lm.n_layers)],
                                    dim=1)
        return (logits if mix is not None else logits.float()), attention  # mixed: the model's dtype


def _slice_batch(batch: CompiledBatch, start: int, stop: int) -> CompiledBatch:
    cut = lambda t: None if t is None else t[start:stop]  # noqa: E731
    size = min(stop, batch.size) - start
    return CompiledBatch(size, cut(batch.ablate), cut(batch.knock_heads), cut(batch.knock_query), cut(batch.knock_key),
                         batch.first_query, cut(batch.scale))
