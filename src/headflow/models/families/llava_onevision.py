"""LLaVA-OneVision (``llava_onevision``): SigLIP tower, any-resolution tiles with newline tokens, Qwen2 LM."""

from __future__ import annotations

from ..adapter import FamilyAdapter, register_adapter
from ..geometry import anyres_rects
from ..subword import qwen2_tokenizer
from ..tiny import QWEN_SPECIAL_TOKENS, chat_template, image_only_processor_cls, qwen2_lm_config, seeded_model


@register_adapter
class LlavaOnevisionAdapter(FamilyAdapter):
    name = "llava_onevision"
    model_types = ("llava_onevision",)

    def token_rects(self, image_size, inputs):
        """One image per prompt (the processor tiles only then): LLaVA-NeXT's any-resolution layout (base image,
        then the unpadded tile grid row by row, a newline token (NaN) after each row), with no CLS token (SigLIP)
        and the grid shrunk bilinearly past ``anyres_max_N`` tiles (see :func:`~headflow.models.geometry.anyres_rects`)."""
        config = self.model.config
        width, height = image_size
        aspect = str(getattr(self.processor, "vision_aspect_ratio", None) or "anyres_max_9")
        max_patches = int(aspect.strip("anyres_max_")) if aspect.startswith("anyres_max_") else None
        pinpoints = getattr(config, "image_grid_pinpoints", None) or self.processor.image_processor.image_grid_pinpoints
        tile = int(config.vision_config.image_size)
        return anyres_rects(width, height, tile, tile // int(config.vision_config.patch_size), pinpoints,
                            max_num_patches=max_patches)

    @classmethod
    def tiny(cls, seed=0):
        """SigLIP 32 px / patch 8 (16 tokens per tile, no CLS) with pinpoints up to 64x64 + a 2-layer Qwen2 LM
        (4 heads, 2 KV heads), with a Qwen2-style byte-level tokenizer and
        llava-hf/llava-onevision-qwen2-7b-ov-hf's chat template (``<|im_start|>user\n<image>\n{question}...``)."""
        from transformers import (
            LlavaOnevisionConfig,
            LlavaOnevisionForConditionalGeneration,
            LlavaOnevisionImageProcessorPil,
            LlavaOnevisionProcessor,
            SiglipVisionConfig,
        )
        from transformers.utils import is_torchvision_available

        image_size, patch_size = 32, 8
        pinpoints = [[32, 64], [64, 32], [64, 64]]
        template = chat_template("llava_onevision")
        tok = qwen2_tokenizer((*QWEN_SPECIAL_TOKENS, "<image>", "<video>"), image_token="<image>",
                              extra_special_tokens={"video_token": "<video>"}, chat_template=template)
        image_processor = LlavaOnevisionImageProcessorPil(
            size={"height": image_size, "width": image_size},
            image_grid_pinpoints=pinpoints,
        )
        kwargs = dict(image_processor=image_processor, tokenizer=tok, num_image_tokens=(image_size // patch_size) ** 2,
                      vision_feature_select_strategy="full", chat_template=template)
        if is_torchvision_available():
            from transformers import LlavaOnevisionVideoProcessor

            processor = LlavaOnevisionProcessor(
                video_processor=LlavaOnevisionVideoProcessor(size={"height": image_size, "width": image_size}),
                **kwargs)
        else:
            processor = image_only_processor_cls(LlavaOnevisionProcessor)(**kwargs)
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=image_size, patch_size=patch_size)
        text = qwen2_lm_config(tok)
        config = LlavaOnevisionConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=tok.image_token_id,
            video_token_index=tok.video_token_id,
            image_grid_pinpoints=pinpoints,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            vision_aspect_ratio="anyres_max_9",
            tie_word_embeddings=False,
        )
        return seeded_model(LlavaOnevisionForConditionalGeneration, config, seed), processor
