"""LLaVA-NeXT (``llava_next``): any-resolution tiles, e.g. Mistral or Vicuna LM."""

from __future__ import annotations

from ...errors import HeadflowError
from ..adapter import FamilyAdapter, register_adapter
from ..geometry import anyres_rects
from ..subword import llama_tokenizer
from ..tiny import chat_template, clip_vision_config, seeded_model, tiny_lm_config


@register_adapter
class LlavaNextAdapter(FamilyAdapter):
    name = "llava_next"
    model_types = ("llava_next",)

    def token_rects(self, image_size, inputs):
        """Anyres: base image (squashed to the tile size), then the unpadded tile grid row by row, each row
        followed by a newline token (NaN)."""
        config = self.model.config
        width, height = image_size
        if getattr(config, "vision_feature_select_strategy", "default") == "full":
            raise HeadflowError("Patch geometry for LLaVA-NeXT with vision_feature_select_strategy='full' is not "
                                "supported; object/background analysis needs the 'default' strategy.")
        pinpoints = getattr(config, "image_grid_pinpoints", None) or self.processor.image_processor.image_grid_pinpoints
        tile = int(config.vision_config.image_size)
        return anyres_rects(width, height, tile, tile // int(config.vision_config.patch_size), pinpoints)

    @classmethod
    def tiny(cls, seed=0):
        """CLIP 32 px / patch 8 with any-resolution pinpoints up to 64x64 + a 2-layer Mistral LM (4 heads,
        2 KV heads), with a Llama/Mistral-style SentencePiece tokenizer and llava-hf/llava-v1.6-mistral-7b-hf's
        chat template (``[INST] <image>\n{question} [/INST]``, which ignores ``add_generation_prompt``; the
        pieces of ``[/INST]`` are ``role`` + ``final``)."""
        from transformers import (
            LlavaNextConfig,
            LlavaNextForConditionalGeneration,
            LlavaNextImageProcessorPil,
            LlavaNextProcessor,
            MistralConfig,
        )

        image_size, patch_size = 32, 8
        pinpoints = [[32, 64], [64, 32], [64, 64]]
        template = chat_template("llava_next_mistral")
        tok = llama_tokenizer(image_token="<image>", chat_template=template)
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            image_grid_pinpoints=pinpoints,
        )
        processor = LlavaNextProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            patch_size=patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=template,
        )
        text = MistralConfig(**tiny_lm_config(tok, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                                              sliding_window=None, tie_word_embeddings=False))
        config = LlavaNextConfig(
            vision_config=clip_vision_config(image_size, patch_size),
            text_config=text,
            image_token_index=tok.image_token_id,
            image_grid_pinpoints=pinpoints,
            image_seq_length=(image_size // patch_size) ** 2,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
            pad_token_id=tok.pad_token_id,
        )
        return seeded_model(LlavaNextForConditionalGeneration, config, seed), processor
