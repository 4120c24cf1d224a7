"""InternVL, the transformers-native ``InternVLForConditionalGeneration`` (``-hf`` checkpoints, Qwen2 LM)."""

from __future__ import annotations

import math

from ...errors import HeadflowError
from ..adapter import FamilyAdapter, register_adapter
from ..geometry import tiles_and_thumbnail_rects
from ..subword import qwen2_tokenizer
from ..tiny import QWEN_SPECIAL_TOKENS, chat_template, image_only_processor_cls, qwen2_lm_config, seeded_model


@register_adapter
class InternVLAdapter(FamilyAdapter):
    name = "internvl"
    model_types = ("internvl",)
    #: the image placeholder of the older InternVL3-hf chat templates (``<image>\n``); the processor expects its
    #: own image token (``<IMG_CONTEXT>``) and fails on the old one
    LEGACY_IMAGE_PLACEHOLDER = "<image>"

    def prompt_text(self, question, n_images=1):
        """The chat template's prompt, with an older template's ``<image>`` placeholders written as the processor's
        image token (so both template variants of the InternVL3-hf checkpoints encode)."""
        text = super().prompt_text(question, n_images=n_images)
        token = self.processor.image_token
        if token not in text and text.count(self.LEGACY_IMAGE_PLACEHOLDER) == n_images:
            text = text.replace(self.LEGACY_IMAGE_PLACEHOLDER, token)
        return text

    def token_rects(self, image_size, inputs):
        """The image resized to a ``cols x rows`` canvas of tiles (row-major), then the thumbnail (whole image
        in one tile) when there is more than one tile; ``image_seq_length`` tokens per tile."""
        width, height = image_size
        per_tile = int(getattr(self.processor, "image_seq_length", None) or self.model.config.image_seq_length)
        q = int(round(math.sqrt(per_tile)))
        if q * q != per_tile:
            raise HeadflowError(f"InternVL patch geometry needs a square token grid per tile; got {per_tile} tokens.")
        return tiles_and_thumbnail_rects(width, height, self.processor.image_processor, q)

    @classmethod
    def tiny(cls, seed=0):
        """InternViT (2 layers, tile 32 px, patch 4; up to 4 tiles + thumbnail, 16 tokens per tile) with the
        pixel-shuffle projector + a 2-layer Qwen2 LM (4 heads, 2 KV heads)."""
        from transformers import (
            GotOcr2ImageProcessorPil,
            InternVLConfig,
            InternVLForConditionalGeneration,
            InternVLProcessor,
        )
        from transformers.models.internvl.configuration_internvl import InternVLVisionConfig
        from transformers.utils import is_torchvision_available

        tile, patch, downsample = 32, 4, 0.5
        image_seq_length = int((tile // patch) ** 2 * downsample**2)  # 16 tokens per tile
        template = chat_template("internvl3")
        tok = qwen2_tokenizer(
            QWEN_SPECIAL_TOKENS,
            image_token="<IMG_CONTEXT>",
            extra_special_tokens={
                "start_image_token": "<img>",
                "end_image_token": "</img>",
                "context_image_token": "<IMG_CONTEXT>",
                "video_token": "<video>",
            },
            chat_template=template,
        )
        image_processor = GotOcr2ImageProcessorPil(
            size={"height": tile, "width": tile},
            crop_to_patches=True,  # dynamic tiling + thumbnail, as in InternVL checkpoints
            min_patches=1,
            max_patches=4,
        )
        if is_torchvision_available():
            from transformers import InternVLVideoProcessor

            processor = InternVLProcessor(
                image_processor=image_processor,
                tokenizer=tok,
                video_processor=InternVLVideoProcessor(size={"height": tile, "width": tile}),
                image_seq_length=image_seq_length,
                chat_template=template,
            )
        else:
            processor = image_only_processor_cls(InternVLProcessor)(
                image_processor=image_processor,
                tokenizer=tok,
                image_seq_length=image_seq_length,
                chat_template=template,
            )
        vision = InternVLVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=[tile, tile],
            patch_size=[patch, patch],
        )
        text = qwen2_lm_config(tok)
        config = InternVLConfig(
            vision_config=vision,
            text_config=text,
            image_token_id=tok.context_image_token_id,
            image_seq_length=image_seq_length,
            downsample_ratio=downsample,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
            tie_word_embeddings=False,
        )
        return seeded_model(InternVLForConditionalGeneration, config, seed), processor
