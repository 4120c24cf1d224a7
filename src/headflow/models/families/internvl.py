"""InternVL, the transformers-native ``InternVLForConditionalGeneration`` (``-hf`` checkpoints, Qwen2 LM)."""

from ..adapter import FamilyAdapter, register_adapter


@register_adapter
class InternVLAdapter(FamilyAdapter):
    name = "internvl"
    model_types = ("internvl",)
