"""Aya Vision (``aya_vision``): SigLIP tower, pixel-shuffle projector, Cohere2 LM; an image is
``<|START_OF_IMG|>``, then per tile ``TILE_i`` and its ``<|IMG_PATCH|>`` tokens, then ``TILE_GLOBAL`` and the
thumbnail's, then ``<|END_OF_IMG|>``."""

from __future__ import annotations

import math

import transformers
from packaging import version

from ...errors import HeadflowError
from ..adapter import FamilyAdapter, register_adapter
from ..geometry import tiles_and_thumbnail_rects
from ..subword import qwen2_tokenizer
from ..tiny import chat_template, seeded_model, tiny_lm_config

#: the processor's image tokens (``TILE`` and ``TILE_GLOBAL`` are plain text: ``TILE_1`` is ``TILE`` + ``_1``)
IMAGE_TOKENS = ("<image>", "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>")
#: Cohere's turn tokens
TURN_TOKENS = ("<BOS_TOKEN>", "<EOS_TOKEN>", "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>",
               "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>")


@register_adapter
class AyaVisionAdapter(FamilyAdapter):
    name = "aya_vision"
    model_types = ("aya_vision",)

    def output_logit_scale(self):
        """Cohere2's ``logit_scale``, which ``AyaVisionForConditionalGeneration.forward`` applies after its
        output head from transformers 5.25 on (5.24 and earlier leave the logits unscaled); the identity-row tests
        hold the engine to whichever the installed version does."""
        if version.parse(transformers.__version__) < version.parse("5.25"):
            return 1.0
        return float(getattr(self.text_config(), "logit_scale", 1.0))

    def token_rects(self, image_size, inputs):
        """GOT-OCR2 dynamic tiles (row-major) then the thumbnail, ``(img_size // patch_size)^2`` tokens per tile
        (:func:`~headflow.models.geometry.tiles_and_thumbnail_rects`); the ``TILE_i`` separators are not image
        tokens."""
        width, height = image_size
        grid = int(self.processor.img_size) // int(self.processor.patch_size)
        if grid < 1 or math.isclose(grid, 0):
            raise HeadflowError("Aya Vision patch geometry needs img_size >= patch_size in the processor.")
        return tiles_and_thumbnail_rects(width, height, self.processor.image_processor, grid)

    @classmethod
    def tiny(cls, seed=0):
        """SigLIP (2 layers, tile 32 px, patch 4) + pixel shuffle 2 (16 tokens per tile, up to 4 tiles + the
        thumbnail) + a 2-layer Cohere2 LM (a sliding-window layer, then a full-attention layer without RoPE; 4
        heads, 2 KV heads), with a byte-level BPE tokenizer (as Cohere's) and a template of aya-vision's prompt
        format (``<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|><image>{question}<|END_OF_TURN_TOKEN|>...``;
        ``templates/SOURCES.md``)."""
        from transformers import (
            AyaVisionConfig,
            AyaVisionForConditionalGeneration,
            AyaVisionProcessor,
            Cohere2Config,
            GotOcr2ImageProcessorPil,
            SiglipVisionConfig,
        )

        tile, patch, downsample = 32, 4, 2
        template = chat_template("aya_vision_format")
        tok = qwen2_tokenizer((*TURN_TOKENS, *IMAGE_TOKENS), image_token="<image>", bos_token="<BOS_TOKEN>",
                              eos_token="<|END_OF_TURN_TOKEN|>", chat_template=template)
        image_processor = GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=True,
                                                   min_patches=1, max_patches=4)
        processor = AyaVisionProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                                       img_size=tile, downsample_factor=downsample, chat_template=template)
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=tile, patch_size=patch)
        text = Cohere2Config(**tiny_lm_config(tok, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                                              bos_token_id=tok.bos_token_id, sliding_window=512,
                                              layer_types=["sliding_attention", "full_attention"],
                                              tie_word_embeddings=False))
        config = AyaVisionConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids(
            "<|IMG_PATCH|>"), downsample_factor=downsample, vision_feature_layer=-1,
            vision_feature_select_strategy="full", alignment_intermediate_size=64, tie_word_embeddings=False)
        return seeded_model(AyaVisionForConditionalGeneration, config, seed), processor
