"""InternVL, the transformers-native ``InternVLForConditionalGeneration`` (``-hf`` checkpoints, Qwen2 LM)."""

from .. import geometry
from ..adapter import FamilyAdapter, register_adapter


@register_adapter
class InternVLAdapter(FamilyAdapter):
    name = "internvl"
    model_types = ("internvl",)

    def token_rects(self, image_size, inputs):  # patch geometry of object/background analysis
        return geometry.internvl_rects(self.processor, self.model.config, image_size, inputs)
