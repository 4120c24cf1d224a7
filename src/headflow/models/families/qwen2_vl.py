"""Qwen2-VL and Qwen2.5-VL: dynamic-resolution vision tower, merged patches, M-RoPE position ids."""

from .. import geometry
from ..adapter import FamilyAdapter, register_adapter


@register_adapter
class Qwen2VLAdapter(FamilyAdapter):
    name = "qwen2_vl"
    model_types = ("qwen2_vl",)
    mrope = True

    def token_rects(self, image_size, inputs):  # patch geometry of object/background analysis
        return geometry.qwen2_vl_rects(self.processor, self.model.config, image_size, inputs)


@register_adapter
class Qwen25VLAdapter(FamilyAdapter):
    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    mrope = True

    def token_rects(self, image_size, inputs):  # patch geometry of object/background analysis
        return geometry.qwen2_vl_rects(self.processor, self.model.config, image_size, inputs)
