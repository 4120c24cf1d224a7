"""Qwen2-VL and Qwen2.5-VL: dynamic-resolution vision tower, merged patches, M-RoPE position ids."""

from __future__ import annotations

import torch

from ...errors import HeadflowError
from ..adapter import FamilyAdapter, register_adapter
from ..geometry import grid_rects
from ..subword import qwen2_tokenizer
from ..tiny import QWEN_SPECIAL_TOKENS, chat_template, image_only_processor_cls, seeded_model, tiny_lm_config

# tiny models: one LM image token per 16x16 pixels, 4 .. 16 image tokens
TINY_PATCH, TINY_MERGE = 8, 2
TINY_MIN_PIXELS, TINY_MAX_PIXELS = 32 * 32, 64 * 64


@register_adapter
class Qwen2VLAdapter(FamilyAdapter):
    name = "qwen2_vl"
    model_types = ("qwen2_vl",)

    def token_rects(self, image_size, inputs):
        """The whole image resized to ``image_grid_thw`` patches; one token per ``merge_size x merge_size``
        patches, row-major."""
        width, height = image_size
        ip = self.processor.image_processor
        grid = inputs.get("image_grid_thw")
        if grid is None:
            raise HeadflowError("Qwen2-VL patch geometry needs 'image_grid_thw' in the processor outputs.")
        t, gh, gw = (int(v) for v in torch.as_tensor(grid)[0].tolist())
        patch, merge = int(ip.patch_size), int(ip.merge_size)
        sy, sx = height / (gh * patch), width / (gw * patch)
        return grid_rects(gh // merge, gw // merge, 0.0, 0.0, patch * merge * sy, patch * merge * sx)

    @classmethod
    def tiny(cls, seed=0):
        """Qwen2 ViT (2 layers, embed 32, patch 8, merge 2) + a 2-layer Qwen2 LM with M-RoPE (4 heads, 2 KV)."""
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
        from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig

        tok = tiny_tokenizer("qwen2_vl")
        processor = tiny_processor(Qwen2VLProcessor, tok)
        vision = Qwen2VLVisionConfig(
            depth=2,
            embed_dim=32,
            hidden_size=64,  # = LM hidden size (merger output)
            mlp_ratio=2,
            num_heads=2,
            patch_size=TINY_PATCH,
            spatial_merge_size=TINY_MERGE,
            temporal_patch_size=2,
        )
        text = Qwen2VLTextConfig(**tiny_text_kwargs(tok))
        config = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **tiny_ids(tok))
        return seeded_model(Qwen2VLForConditionalGeneration, config, seed), processor


@register_adapter
class Qwen25VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: Qwen2-VL's prompt, position ids and patch geometry; a windowed RMSNorm/SwiGLU ViT."""

    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)

    @classmethod
    def tiny(cls, seed=0):
        """Qwen2.5 ViT (2 layers, window 32 px = 2x2 merged tokens, full attention in block 1) + the LM of
        :meth:`Qwen2VLAdapter.tiny`."""
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import (
            Qwen2_5_VLTextConfig,
            Qwen2_5_VLVisionConfig,
        )

        tok = tiny_tokenizer("qwen2_5_vl")
        processor = tiny_processor(Qwen2_5_VLProcessor, tok)
        vision = Qwen2_5_VLVisionConfig(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,  # = LM hidden size
            patch_size=TINY_PATCH,
            spatial_merge_size=TINY_MERGE,
            temporal_patch_size=2,
            window_size=32,  # 2x2 merged tokens per window
            fullatt_block_indexes=[1],
        )
        text = Qwen2_5_VLTextConfig(**tiny_text_kwargs(tok))
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **tiny_ids(tok))
        return seeded_model(Qwen2_5_VLForConditionalGeneration, config, seed), processor


# ----------------------------------------------------------------------------------------------
# tiny-model pieces shared by the two families of this file


def tiny_tokenizer(template: str):
    """A Qwen2-style byte-level BPE tokenizer with the ChatML and vision tokens and the checkpoint line's chat
    template (``templates/<template>.jinja``: Qwen/Qwen2-VL-7B-Instruct's, Qwen/Qwen2.5-VL-7B-Instruct's)."""
    return qwen2_tokenizer(
        QWEN_SPECIAL_TOKENS,
        image_token="<|image_pad|>",
        extra_special_tokens={
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
        chat_template=chat_template(template),
    )


def tiny_text_kwargs(tok) -> dict:
    # head_dim = 64 / 4 = 16 -> 8 rotary frequencies split over (t, h, w)
    return tiny_lm_config(tok, num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=None,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})


def tiny_processor(processor_cls, tok):
    """``processor_cls`` with a tiny Qwen2-VL image processor (and video processor where torchvision is)."""
    from transformers import Qwen2VLImageProcessorPil
    from transformers.utils import is_torchvision_available

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=TINY_MIN_PIXELS,
        max_pixels=TINY_MAX_PIXELS,
        patch_size=TINY_PATCH,
        temporal_patch_size=2,
        merge_size=TINY_MERGE,
    )
    if is_torchvision_available():  # stock processor with a (tiny) Qwen2-VL video processor
        from transformers import Qwen2VLVideoProcessor

        video_processor = Qwen2VLVideoProcessor(
            min_pixels=TINY_MIN_PIXELS,
            max_pixels=TINY_MAX_PIXELS,
            patch_size=TINY_PATCH,
            temporal_patch_size=2,
            merge_size=TINY_MERGE,
        )
        return processor_cls(
            image_processor=image_processor,
            tokenizer=tok,
            video_processor=video_processor,
            chat_template=tok.chat_template,
        )
    return image_only_processor_cls(processor_cls)(
        image_processor=image_processor, tokenizer=tok, chat_template=tok.chat_template
    )


def tiny_ids(tok) -> dict:
    conv = tok.convert_tokens_to_ids
    return dict(
        image_token_id=conv("<|image_pad|>"),
        video_token_id=conv("<|video_pad|>"),
        vision_start_token_id=conv("<|vision_start|>"),
        vision_end_token_id=conv("<|vision_end|>"),
    )
