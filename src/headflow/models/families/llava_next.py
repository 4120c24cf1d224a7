"""LLaVA-NeXT (``llava_next``): any-resolution tiles, e.g. Mistral or Vicuna LM."""

from .. import geometry
from ..adapter import FamilyAdapter, register_adapter


@register_adapter
class LlavaNextAdapter(FamilyAdapter):
    name = "llava_next"
    model_types = ("llava_next",)

    def token_rects(self, image_size, inputs):  # patch geometry of object/background analysis
        return geometry.llava_next_rects(self.processor, self.model.config, image_size, inputs)
