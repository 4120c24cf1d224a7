"""Gemma 3 (``gemma3``): SigLIP tower, pooled to a fixed grid of soft tokens, Gemma 3 LM with interleaved
sliding-window and global layers; the image block attends itself bidirectionally (``token_type_ids``)."""

from __future__ import annotations

import math

import torch

from ...errors import HeadflowError
from ..adapter import FamilyAdapter, register_adapter
from ..geometry import grid_rects
from ..subword import gemma_tokenizer
from ..tiny import chat_template, seeded_model, tiny_lm_config

# tiny model: SigLIP 32 px / patch 8 = 4x4 patches, average-pooled 2x2 -> 2x2 = 4 soft tokens per image
TINY_IMAGE, TINY_PATCH, TINY_TOKENS = 32, 8, 4


@register_adapter
class Gemma3Adapter(FamilyAdapter):
    name = "gemma3"
    model_types = ("gemma3",)
    prompt_has_special_tokens = True  # the chat template writes <bos>

    def token_rects(self, image_size, inputs):
        """Without pan-and-scan the whole image is resized (aspect ratio not kept) to the tower's square input and
        its patches average-pooled to a ``sqrt(mm_tokens_per_image)``-sided grid, row-major."""
        ip = self.processor.image_processor
        if getattr(ip, "do_pan_and_scan", False):
            raise HeadflowError("Gemma 3 patch geometry with pan-and-scan crops is not supported; set the image "
                                "processor's do_pan_and_scan=False.")
        width, height = image_size
        side = math.isqrt(int(self.model.config.mm_tokens_per_image))
        return grid_rects(side, side, 0.0, 0.0, height / side, width / side)

    @classmethod
    def tiny(cls, seed=0):
        """SigLIP (2 layers, 32 px, patch 8) pooled to 2x2 = 4 soft tokens + a 2-layer Gemma 3 LM (4 heads, 2 KV,
        layer 0 sliding-window, layer 1 global), with a Gemma-style SentencePiece tokenizer and Gemma 3's chat
        template."""
        from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor
        from transformers.models.gemma3.configuration_gemma3 import Gemma3TextConfig
        from transformers.models.siglip.configuration_siglip import SiglipVisionConfig

        template = chat_template("gemma3")
        tok = gemma_tokenizer(["<start_of_turn>", "<end_of_turn>"], image_token="<image_soft_token>",
                              extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"},
                              chat_template=template)
        image_processor = Gemma3ImageProcessorPil(size={"height": TINY_IMAGE, "width": TINY_IMAGE},
                                                  do_pan_and_scan=False)
        processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, chat_template=template,
                                    image_seq_length=TINY_TOKENS)
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=TINY_IMAGE, patch_size=TINY_PATCH)
        text = Gemma3TextConfig(**tiny_lm_config(tok, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                                                 layer_types=["sliding_attention", "full_attention"],
                                                 sliding_window=512, query_pre_attn_scalar=16))
        conv = tok.convert_tokens_to_ids
        config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=TINY_TOKENS,
                              boi_token_index=conv("<start_of_image>"), eoi_token_index=conv("<end_of_image>"),
                              image_token_index=conv("<image_soft_token>"), tie_word_embeddings=True)
        model = seeded_model(Gemma3ForConditionalGeneration, config, seed)
        # Gemma 3 initialises its image projection to zeros: every image token would embed as 0 and the tiny model
        # would see no image at all. A seeded random projection (image embeddings of about the text's norm).
        projection = model.model.multi_modal_projector.mm_input_projection_weight
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            projection.copy_(torch.randn(projection.shape, generator=generator) * 0.05)
        return model, processor
