"""LLaVA-1.5 (``llava``): CLIP tower, 2-layer projector, Llama/Vicuna LM, ``USER: <image>\\n... ASSISTANT:``."""

from __future__ import annotations

import numpy as np

from ..adapter import FamilyAdapter, register_adapter
from ..geometry import grid_rects, size_value
from ..subword import llama_tokenizer
from ..tiny import chat_template, clip_vision_config, seeded_model, tiny_lm_config


@register_adapter
class LlavaAdapter(FamilyAdapter):
    name = "llava"
    model_types = ("llava",)

    def token_rects(self, image_size, inputs):
        """[pad to square] → resize (shortest edge or exact size) → centre crop → patch grid."""
        config = self.model.config
        width, height = image_size
        ip = self.processor.image_processor
        oy = ox = 0.0
        h, w = float(height), float(width)
        if getattr(ip, "do_pad", False):  # LlavaImageProcessor.pad_to_square: image centred on the long side
            side = max(height, width)
            if width > height:
                oy = float((side - height) // 2)
            else:
                ox = float((side - width) // 2)
            h = w = float(side)
        rh, rw = h, w
        if getattr(ip, "do_resize", True):
            short_edge = size_value(ip.size, "shortest_edge")
            if short_edge:
                short, long = (w, h) if w <= h else (h, w)
                new_long = int(short_edge * long / short)
                rh, rw = (new_long, short_edge) if w <= h else (short_edge, new_long)
            else:
                rh, rw = size_value(ip.size, "height"), size_value(ip.size, "width")
        sy, sx = h / rh, w / rw  # processed px → (padded) original px
        top = left = 0
        ch, cw = rh, rw
        if getattr(ip, "do_center_crop", False):
            ch, cw = size_value(ip.crop_size, "height"), size_value(ip.crop_size, "width")
            top, left = int((rh - ch) / 2.0), int((rw - cw) / 2.0)
        patch = int(config.vision_config.patch_size)
        rows, cols = int(ch) // patch, int(cw) // patch
        rects = grid_rects(rows, cols, top * sy - oy, left * sx - ox, patch * sy, patch * sx)
        if getattr(config, "vision_feature_select_strategy", "default") == "full":
            rects = np.concatenate([np.full((1, 4), np.nan), rects])
        return rects

    @classmethod
    def tiny(cls, seed=0):
        """CLIP 32 px / patch 8 (4x4 = 16 image tokens, CLS dropped) + a 2-layer Llama LM (4 heads, MHA), with a
        Llama-style SentencePiece tokenizer and llava-hf/llava-1.5-7b-hf's chat template
        (``USER: <image>\n{question} ASSISTANT:``)."""
        from transformers import (
            CLIPImageProcessorPil,
            LlamaConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
        )

        image_size, patch_size = 32, 8  # 4x4 = 16 patches (+ CLS, dropped by "default")
        template = chat_template("llava")
        tok = llama_tokenizer(image_token="<image>", chat_template=template)
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        )
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            patch_size=patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=template,
        )
        text = LlamaConfig(**tiny_lm_config(tok, num_key_value_heads=4, head_dim=16, max_position_embeddings=512,
                                            tie_word_embeddings=False))
        config = LlavaConfig(
            vision_config=clip_vision_config(image_size, patch_size),
            text_config=text,
            image_token_index=tok.image_token_id,
            image_seq_length=(image_size // patch_size) ** 2,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
            pad_token_id=tok.pad_token_id,
        )
        return seeded_model(LlavaForConditionalGeneration, config, seed), processor
