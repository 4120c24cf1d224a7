"""LLaVA-1.5 (``llava``): CLIP tower, 2-layer projector, Llama/Vicuna LM, ``USER: <image>\\n... ASSISTANT:``."""

from ..adapter import FamilyAdapter, register_adapter


@register_adapter
class LlavaAdapter(FamilyAdapter):
    name = "llava"
    model_types = ("llava",)
