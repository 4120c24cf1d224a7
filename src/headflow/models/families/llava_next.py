"""LLaVA-NeXT (``llava_next``): any-resolution tiles, e.g. Mistral or Vicuna LM."""

from ..adapter import FamilyAdapter, register_adapter


@register_adapter
class LlavaNextAdapter(FamilyAdapter):
    name = "llava_next"
    model_types = ("llava_next",)
