"""Qwen3-VL (``qwen3_vl``): Qwen2-VL-style merged patches and M-RoPE position ids, plus DeepStack: features of
early vision layers added to the language model's hidden states at image positions after its first layers."""

from __future__ import annotations

from ..adapter import register_adapter
from ..tiny import seeded_model, tiny_lm_config
from .qwen2_vl import TINY_MERGE, TINY_PATCH, Qwen2VLAdapter, tiny_ids, tiny_processor, tiny_tokenizer


@register_adapter
class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen2-VL's prompt layout and patch geometry (``image_grid_thw`` patches, one token per merged
    ``merge_size x merge_size`` block, row-major); the language model also receives ``visual_pos_masks`` and
    ``deepstack_visual_embeds``, which the engine replays."""

    name = "qwen3_vl"
    model_types = ("qwen3_vl",)

    @classmethod
    def tiny(cls, seed=0):
        """Qwen3-VL ViT (2 layers, hidden 32, patch 8, merge 2, DeepStack from block 0) + a 2-layer Qwen3 LM with
        interleaved M-RoPE (4 heads, 2 KV), Qwen2-VL's byte-level tokenizer and chat template (Qwen3-VL's own was
        not found verbatim; see templates/SOURCES.md)."""
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
        from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig, Qwen3VLVisionConfig

        tok = tiny_tokenizer("qwen2_vl")
        processor = tiny_processor(Qwen3VLProcessor, tok)
        vision = Qwen3VLVisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=TINY_PATCH,
                                     spatial_merge_size=TINY_MERGE, temporal_patch_size=2, out_hidden_size=64,
                                     num_position_embeddings=16, deepstack_visual_indexes=[0])
        text = Qwen3VLTextConfig(**tiny_lm_config(
            tok, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, bos_token_id=None,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                             "mrope_interleaved": True}))
        config = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **tiny_ids(tok))
        return seeded_model(Qwen3VLForConditionalGeneration, config, seed), processor
