"""Family adapters: what differs between LVLM families, declared in one small class per family.

Adding a family is one file in ``models/families/`` with a subclass of :class:`FamilyAdapter`
decorated with :func:`register_adapter`; nothing else needs editing.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from PIL import Image

from ..errors import HeadflowError
from .groups import TokenGroups, derive_groups

ADAPTERS: dict[str, type["FamilyAdapter"]] = {}


def register_adapter(cls: type["FamilyAdapter"]) -> type["FamilyAdapter"]:
    """Class decorator: make a family adapter known to :func:`adapter_for` and ``tiny:<name>``."""
    ADAPTERS[cls.name] = cls
    return cls


class FamilyAdapter:
    """How headflow finds its way around one LVLM family.

    Class attributes declare the family: ``name`` (used in ``tiny:<name>``), ``model_types`` (the
    ``config.model_type`` values it serves). Methods have working defaults for transformers 5.x
    ``*ForConditionalGeneration`` classes; a family overrides only what differs.
    """

    name: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    #: sub-config of the language model, as ``set_attn_implementation`` expects it
    text_config_key: ClassVar[str] = "text_config"
    #: whether the language model gets multi-axis (M-RoPE) position ids
    mrope: ClassVar[bool] = False

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

    def encode(self, images: Sequence[Image.Image], question: str) -> tuple[dict[str, torch.Tensor], TokenGroups]:
        """Processor inputs for one prompt and its token groups."""
        if not images:
            raise HeadflowError("A prompt needs at least one image; pass image=PIL.Image.")
        messages = self.messages(question, n_images=len(images))
        template = self.processor.apply_chat_template
        text = template(messages, add_generation_prompt=True, tokenize=False)
        text_no_gen = template(messages, add_generation_prompt=False, tokenize=False)
        inputs = self.processor(text=[text], images=list(images), return_tensors="pt")
        plain = self.processor(text=[text_no_gen], images=list(images), return_tensors="pt")
        ids = inputs["input_ids"][0].tolist()
        groups = derive_groups(ids, self.image_token_id(), plain["input_ids"][0].tolist())
        return dict(inputs), groups

    @classmethod
    def tiny(cls, seed: int = 0) -> tuple[torch.nn.Module, Any]:
        """A tiny random-weight model of this family with a locally built processor."""
        from .tiny import build_tiny

        return build_tiny(cls.name, seed=seed)


def adapter_for(model: torch.nn.Module, processor: Any) -> FamilyAdapter:
    """The registered adapter for a loaded model, or a clear error naming the supported families."""
    from . import families  # noqa: F401  (registers the built-in adapters)

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
    from . import families  # noqa: F401

    if name not in ADAPTERS:
        raise HeadflowError(f"Unknown family {name!r}. Supported: {', '.join(sorted(ADAPTERS))}.")
    return ADAPTERS[name]
