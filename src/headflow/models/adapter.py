"""Family adapters: what differs between LVLM families, declared in one class per family.

A family is one file, ``models/families/<name>.py``: a subclass of :class:`FamilyAdapter` decorated with
:func:`register_adapter` that carries everything family-specific, including its patch geometry
(:meth:`FamilyAdapter.token_rects`) and its tiny random-weight test model (:meth:`FamilyAdapter.tiny`).
Every module in that package is imported on first use of the registry (:func:`family_names`,
:func:`adapter_class`, :func:`adapter_for`), so nothing else needs editing: ``tiny:<name>`` and every
family test (they parametrise over :func:`family_names`) pick a new file up by themselves. How to add one:
``models/families/README.md``.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import HeadflowError
from .groups import SENTINEL, TokenGroups, answer_header, derive_groups, header_token_count

ADAPTERS: dict[str, type["FamilyAdapter"]] = {}
_families_imported = False


def register_adapter(cls: type["FamilyAdapter"]) -> type["FamilyAdapter"]:
    """Class decorator: make a family adapter known to :func:`adapter_for` and ``tiny:<name>``.

    Raises
    ------
    HeadflowError
        If the class has no ``name``, or another class already registered that name (e.g. a copied
        adapter file whose ``name`` was not changed, which would silently replace the original).
    """
    if not cls.name:
        raise HeadflowError(f"Adapter {cls.__qualname__} needs a family name: set its class attribute 'name'.")
    other = ADAPTERS.get(cls.name)
    if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
        raise HeadflowError(f"Family name {cls.name!r} of {cls.__module__}.{cls.__qualname__} is already taken by "
                            f"{other.__module__}.{other.__qualname__}; give the new adapter its own 'name'.")
    ADAPTERS[cls.name] = cls
    return cls


def _import_families() -> None:
    """Import every module of :mod:`headflow.models.families` once; each registers its adapters."""
    global _families_imported
    if _families_imported:
        return
    from . import families

    for module in pkgutil.iter_modules(families.__path__, f"{families.__name__}."):
        importlib.import_module(module.name)
    _families_imported = True


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

    def __init__(self, model: torch.nn.Module, processor: Any) -> None:
        self.model = model
        self.processor = processor

    # -- structure -------------------------------------------------------------------------
    def language_model(self) -> torch.nn.Module:
        return self.model.model.language_model

    def text_config(self) -> Any:
        return self.model.config.get_text_config()

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
        inputs = self.processor(text=[text], images=list(images), return_tensors="pt")
        ids = inputs["input_ids"][0].tolist()
        header = answer_header(lambda q: self.prompt_text(q, n_images=len(images)))
        n_header = header_token_count(self.tokenizer(), text, header)
        plain = self.tokenizer()(text, add_special_tokens=False)["input_ids"]
        if n_header and ids[-n_header:] != plain[-n_header:]:
            raise HeadflowError(f"The processor tokenizes the template's answer header {header!r} differently from its "
                                "tokenizer; headflow cannot place the 'role' and 'final' tokens.")
        groups = derive_groups(ids, self.image_token_id(), n_header, header)
        return dict(inputs), groups

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
