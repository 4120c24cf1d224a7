"""Family adapters: what differs between LVLM families, declared in one class per family.

A family is one file, ``models/families/<name>.py``: a subclass of :class:`FamilyAdapter` decorated with
:func:`register_adapter` that carries everything family-specific, including its patch geometry
(:meth:`FamilyAdapter.token_rects`) and its tiny random-weight test model (:meth:`FamilyAdapter.tiny`).
Every module in that package is imported on first use of the registry (:func:`family_names`,
:func:`adapter_class`, :func:`adapter_for`), so nothing else needs editing: ``tiny:<name>`` and every
family test (they parametrise over :func:`family_names`) pick a new file up by themselves. How to add one:
``models/families/README.md``.

A family can also live outside headflow:

* an **adapter file** (any ``.py`` file with a ``@register_adapter`` class), loaded by :func:`load_adapter_file`
  (the CLI's ``--adapter FILE``) or named in the environment variable ``HEADFLOW_ADAPTERS`` (paths separated
  by ``os.pathsep``), which is read on first use of the registry. ``--adapter`` sets that variable, so every
  process that loads models for the command (Ray workers included: it is passed in their runtime
  environment) registers the same families; the file must exist at the same path there;
* an installed package that declares an **entry point** in the group ``headflow.families`` (a module that
  registers adapters, or an adapter class), loaded on first use of the registry.

Where state lives: the registry is :data:`ADAPTERS` (family name -> class), filled on first use in this
process; :data:`ADAPTER_FILES` records the adapter files loaded (module name -> the classes each registered),
so that loading one file again is a no-op.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import HeadflowError, MissingFileError
from .groups import SENTINEL, TokenGroups, answer_header, derive_groups, header_token_count

ADAPTERS: dict[str, type["FamilyAdapter"]] = {}
#: adapter files loaded in this process: module name -> the adapter classes the file registered
ADAPTER_FILES: dict[str, tuple[type["FamilyAdapter"], ...]] = {}
#: environment variable naming adapter files to load on first use of the registry (``os.pathsep``-separated)
ADAPTERS_ENV = "HEADFLOW_ADAPTERS"
#: entry-point group of installed packages that provide families
ENTRY_POINT_GROUP = "headflow.families"
_families_imported = False
_plugins_loaded = False


def register_adapter(cls: type["FamilyAdapter"]) -> type["FamilyAdapter"]:
    """Class decorator: make a family adapter known to :func:`adapter_for` and ``tiny:<name>``.

    Raises
    ------
    HeadflowError
        If the class has no ``name``, or another class already registered that name (e.g. a copied
        adapter file whose ``name`` was not changed, which would silently replace the original), or
        one of its ``model_types`` is already served by another family (:func:`adapter_for` would
        silently keep using the other one).
    """
    if not cls.name:
        raise HeadflowError(f"Adapter {cls.__qualname__} needs a family name: set its class attribute 'name'.")
    same = lambda other: (other.__module__, other.__qualname__) == (cls.__module__, cls.__qualname__)  # noqa: E731
    other = ADAPTERS.get(cls.name)
    if other is not None and not same(other):
        raise HeadflowError(f"Family name {cls.name!r} of {cls.__module__}.{cls.__qualname__} is already taken by "
                            f"{other.__module__}.{other.__qualname__}; give the new adapter its own 'name'.")
    for other in ADAPTERS.values():
        shared = [t for t in cls.model_types if t in other.model_types]
        if shared and not same(other) and other.name != cls.name:
            raise HeadflowError(f"Model type {shared[0]!r} of {cls.__module__}.{cls.__qualname__} is already served "
                                f"by family {other.name!r} ({other.__module__}.{other.__qualname__}); give the new "
                                "adapter its own 'model_types' (the config.model_type values it serves).")
    ADAPTERS[cls.name] = cls
    return cls


def _import_builtin_families() -> None:
    """Import every module of :mod:`headflow.models.families` once; each registers its adapters."""
    global _families_imported
    if _families_imported:
        return
    from . import families

    for module in pkgutil.iter_modules(families.__path__, f"{families.__name__}."):
        importlib.import_module(module.name)
    _families_imported = True


def _import_families() -> None:
    """The built-in families, then (once per process) the entry points of ``headflow.families`` and the adapter
    files named in ``HEADFLOW_ADAPTERS``. A plugin that fails is one line naming it, and is tried again on the
    next use of the registry."""
    global _plugins_loaded
    _import_builtin_families()
    if _plugins_loaded:
        return
    _plugins_loaded = True  # first: a plugin's own imports may use the registry
    try:
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            _load_entry_point(entry)
        for path in adapter_paths_from_env():
            load_adapter_file(path)
    except BaseException:
        _plugins_loaded = False
        raise


def _load_entry_point(entry: importlib.metadata.EntryPoint) -> None:
    where = f"entry point {entry.name!r} ({entry.value}) of group {ENTRY_POINT_GROUP!r}"
    try:
        loaded = entry.load()
    except Exception as exc:  # noqa: BLE001 - a third-party plugin may raise anything
        raise HeadflowError(f"Cannot load the family {where}: {_one_line(exc)}. Fix or uninstall the package that "
                            "declares it.") from None
    if isinstance(loaded, type) and issubclass(loaded, FamilyAdapter):
        register_adapter(loaded)


def adapter_paths_from_env() -> list[str]:
    """The adapter files named in ``HEADFLOW_ADAPTERS`` (empty when it is unset)."""
    return [p for p in os.environ.get(ADAPTERS_ENV, "").split(os.pathsep) if p.strip()]


def load_adapter_file(path: str | Path) -> list[str]:
    """Import a user's adapter file so that its ``@register_adapter`` classes join the registry.

    The file is imported as a module of its own (named after its resolved path, so two files called
    ``adapter.py`` do not collide); loading the same file again only re-registers its classes. The
    built-in families are imported first, so a file may subclass them.

    Parameters
    ----------
    path : str or Path
        A ``.py`` file.

    Returns
    -------
    list of str
        The family names the file registered.

    Raises
    ------
    HeadflowError
        One line naming the file: it does not exist (:class:`~headflow.errors.MissingFileError`), is not a
        ``.py`` file, raised while importing (the error's type and first line), or registered no adapter.
    """
    _import_builtin_families()
    given = Path(path).expanduser()
    if not given.exists():
        raise MissingFileError(f"Adapter file {str(path)!r} does not exist (resolved: {given.resolve()}). Pass the "
                               "path of a .py file that defines a @register_adapter FamilyAdapter subclass.")
    if not given.is_file() or given.suffix != ".py":
        raise HeadflowError(f"Adapter file {str(path)!r} is not a .py file. Pass a Python file that defines a "
                            "@register_adapter FamilyAdapter subclass.")
    resolved = given.resolve()
    module_name = f"headflow_adapter_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:12]}"
    if module_name in ADAPTER_FILES:
        for cls in ADAPTER_FILES[module_name]:
            register_adapter(cls)
        return [cls.name for cls in ADAPTER_FILES[module_name]]
    before = dict(ADAPTERS)
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        ADAPTERS.clear()
        ADAPTERS.update(before)
        if not isinstance(exc, Exception):
            raise
        raise HeadflowError(f"Adapter file {str(path)!r} failed to import: {_one_line(exc)}. Fix the file, or "
                            "run it with python to see the traceback.") from None
    added = tuple(cls for name, cls in ADAPTERS.items() if before.get(name) is not cls)
    if not added:
        sys.modules.pop(module_name, None)
        raise HeadflowError(f"Adapter file {str(path)!r} registers no family adapter. Decorate a FamilyAdapter "
                            "subclass with @register_adapter (from headflow.models import FamilyAdapter, "
                            "register_adapter).")
    ADAPTER_FILES[module_name] = added
    return [cls.name for cls in added]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0].strip().rstrip(".") if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def family_names() -> list[str]:
    """Names of all registered families (``tiny:<name>``), sorted; imports the built-in family modules."""
    _import_families()
    return sorted(ADAPTERS)


class FamilyAdapter:
    """How headflow finds its way around one LVLM family.

    Class attributes declare the family: ``name`` (used in ``tiny:<name>``), ``model_types`` (the
    ``config.model_type`` values it serves). Methods have working defaults for transformers 5.x
    ``*ForConditionalGeneration`` classes; a family overrides only what differs, and adds its patch
    geometry (:meth:`token_rects`) and its tiny test model (:meth:`tiny`).
    """

    name: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    #: sub-config of the language model, as ``set_attn_implementation`` expects it
    text_config_key: ClassVar[str] = "text_config"
    #: the prompt text already holds the tokenizer's special tokens (a chat template that writes ``<bos>``): the
    #: processor is called with ``add_special_tokens=False``, as ``apply_chat_template(tokenize=True)`` does
    prompt_has_special_tokens: ClassVar[bool] = False
    #: token groups the family's prompt layout has no token for (PaliGemma: nothing before the image, and a
    #: one-token answer header); knockouts and flow pairs that need one are refused
    empty_groups: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: torch.nn.Module, processor: Any) -> None:
        self.model = model
        self.processor = processor

    # -- structure -------------------------------------------------------------------------
    def language_model(self) -> torch.nn.Module:
        return self.model.model.language_model

    def text_config(self) -> Any:
        return self.model.config.get_text_config()

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., vocab]`` of the language model's last hidden states, as the model's own forward computes
        them after its language model: the output head, times :meth:`output_logit_scale`, then any final logit
        soft-capping."""
        logits = self.model.get_output_embeddings()(hidden) * self.output_logit_scale()
        cap = getattr(self.text_config(), "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def output_logit_scale(self) -> float:
        """The factor the model's own forward multiplies the output head's logits by (1: none; Cohere's
        ``logit_scale`` where the installed transformers applies it)."""
        return 1.0

    def image_token_id(self) -> int:
        config = self.model.config
        for attr in ("image_token_id", "image_token_index"):
            value = getattr(config, attr, None)
            if value is not None:
                return int(value)
        return int(self.processor.image_token_id)

    # -- prompts ---------------------------------------------------------------------------
    def messages(self, question: str, n_images: int = 1) -> list[dict]:
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
        return [{"role": "user", "content": content}]

    def tokenizer(self) -> Any:
        """The text tokenizer (the processor's, or the processor itself when it is one)."""
        return getattr(self.processor, "tokenizer", self.processor)

    def prompt_text(self, question: str, n_images: int = 1) -> str:
        """The chat template rendered for one user turn (``n_images`` images, then ``question``), ending where
        the answer begins (with the generation prompt)."""
        return self.processor.apply_chat_template(self.messages(question, n_images=n_images),
                                                  add_generation_prompt=True, tokenize=False)

    def processor_text(self, question: str, n_images: int = 1) -> str:
        """The text handed to the processor for one prompt (default: :meth:`prompt_text`; a processor that builds
        the prompt itself, like PaliGemma's, gets less)."""
        return self.prompt_text(question, n_images=n_images)

    def answer_joiner(self, question: str) -> str | None:
        """What the chat template writes between its answer header and an assistant's answer (``" "`` for LLaVA's
        ``ASSISTANT: cat``), from rendering a finished turn; None where the template does not show it."""
        turn = self.messages(question) + [{"role": "assistant", "content": [{"type": "text", "text": SENTINEL}]}]
        try:
            text = self.processor.apply_chat_template(turn, add_generation_prompt=False, tokenize=False)
        except Exception:  # noqa: BLE001 - a template that refuses assistant turns: unknown
            return None
        before = text[:text.find(SENTINEL)] if SENTINEL in text else None
        prompt = self.prompt_text(question)
        if before is None or not before.startswith(prompt) or before[len(prompt):].strip():
            return None
        return before[len(prompt):]

    def encode(self, images: Sequence[Image.Image], question: str) -> tuple[dict[str, torch.Tensor], TokenGroups]:
        """Processor inputs for one prompt and its token groups."""
        if not images:
            raise HeadflowError("A prompt needs at least one image; pass image=PIL.Image.")
        text = self.prompt_text(question, n_images=len(images))
        extra = {"add_special_tokens": False} if self.prompt_has_special_tokens else {}
        inputs = self.processor(text=[self.processor_text(question, n_images=len(images))], images=list(images),
                                return_tensors="pt", **extra)
        ids = inputs["input_ids"][0].tolist()
        header = answer_header(lambda q: self.prompt_text(q, n_images=len(images)))
        n_header = header_token_count(self.tokenizer(), text, header)
        plain = self.tokenizer()(text, add_special_tokens=False)["input_ids"]
        if n_header and ids[-n_header:] != plain[-n_header:]:
            raise HeadflowError(f"The processor tokenizes the template's answer header {header!r} differently from its "
                                "tokenizer; headflow cannot place the 'role' and 'final' tokens.")
        counts = [self.image_token_count(image, question) for image in images] if len(images) > 1 else ()
        groups = derive_groups(ids, self.image_token_id(), n_header, header, counts)
        return dict(inputs), groups

    def image_token_count(self, image: Image.Image, question: str) -> int:
        """How many image tokens the processor writes for ``image`` alone (tiles and rows of a split image
        included): how a prompt with several images is split into per-image groups."""
        extra = {"add_special_tokens": False} if self.prompt_has_special_tokens else {}
        ids = self.processor(text=[self.processor_text(question, n_images=1)], images=[image], return_tensors="pt",
                             **extra)["input_ids"][0]
        return int((ids == self.image_token_id()).sum())

    # -- patch geometry --------------------------------------------------------------------
    def token_rects(self, image_size: tuple[int, int], inputs: dict) -> np.ndarray:
        """Rectangles ``Float[ndarray, "image_token 4"]`` = ``(y0, y1, x0, x1)`` in the original image's
        pixels (NaN: a token without a region), in the order of the prompt's image tokens, computed by
        replaying the processor's resize / pad / crop / tile steps (shared math: :mod:`.geometry`).

        The default has none and raises; object/background analysis is then switched off.
        """
        supported = sorted(n for n, c in ADAPTERS.items() if c.token_rects is not FamilyAdapter.token_rects)
        raise HeadflowError(
            f"No patch geometry for family {self.name!r}; object/background analysis supports "
            f"{', '.join(supported)}. Add a token_rects(image_size, inputs) method to its adapter.")

    # -- tiny test model -------------------------------------------------------------------
    @classmethod
    def tiny(cls, seed: int = 0) -> tuple[torch.nn.Module, Any]:
        """A tiny random-weight model of this family (fp32, eval mode, weights fully determined by
        ``seed``) with a locally built processor: what ``tiny:<name>`` and the tests load."""
        raise HeadflowError(f"Family {cls.name!r} has no tiny test model; add a tiny(seed) classmethod to its "
                            "adapter (see headflow/models/families/README.md).")


def adapter_for(model: torch.nn.Module, processor: Any) -> FamilyAdapter:
    """The registered adapter for a loaded model, or a clear error naming the supported families."""
    _import_families()

    model_type = getattr(model.config, "model_type", None)
    for cls in ADAPTERS.values():
        if model_type in cls.model_types:
            return cls(model, processor)
    supported = ", ".join(sorted(t for cls in ADAPTERS.values() for t in cls.model_types))
    raise HeadflowError(
        f"Unsupported model type {model_type!r}. Supported: {supported}. "
        "To add a family, subclass headflow.models.FamilyAdapter and decorate it with @register_adapter."
    )


def adapter_class(name: str) -> type[FamilyAdapter]:
    """The registered adapter class of family ``name``, or an error listing the registered families."""
    names = family_names()
    if name not in ADAPTERS:
        raise HeadflowError(f"Unknown family {name!r}. Supported: {', '.join(names)}.")
    return ADAPTERS[name]
