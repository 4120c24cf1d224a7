"""LLaVA-1.5 (``llava``): CLIP tower, 2-layer projector, Llama/Vicuna LM, ``USER: <image>\\n... ASSISTANT:``."""

from .. import geometry
from ..adapter import FamilyAdapter, register_adapter


@register_adapter
class LlavaAdapter(FamilyAdapter):
    name = "llava"
    model_types = ("llava",)

    def token_rects(self, image_size, inputs):  # patch geometry of object/background analysis
        return geometry.llava_rects(self.processor, self.model.config, image_size, inputs)
